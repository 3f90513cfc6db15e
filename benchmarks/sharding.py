"""What the mesh and remat options cost and save.

    python -m benchmarks.sharding [--model=big] [--rows=8] [--length=256] [--json]
    python -m benchmarks.sharding --run [--model=1b] [--rows=4] [--steps=10] [--remat=minimal]

Without `--run`, nothing is allocated (a 1–3B-parameter shape runs on a laptop):
(a) per-device bytes of parameters + Adam moments under each mesh layout of 8 devices, read
    from the shardings `transformer.parallel.sharding` gives the abstract train state;
(b) for each remat policy ('none', 'minimal', 'full'): trace + compile time of the train step
    and its peak temporary memory from XLA's `memory_analysis()` on one device, with a batch of
    `--rows` rows of `--length` tokens (`--layers=N` per stack, `--scan_layers` scanned).

`--run` (for a lent GPU/TPU): the bfloat16 train step of `--model` under FSDP over every local
device (mesh (1, devices, 1)), the state created already sharded: step time, tokens/s, MFU and
the peak memory per device (the device's own counter, where it has one).

`--model` is 'base', 'big' (the paper's) or '1b' (d_model 2048, 32 heads, d_ff 8192, 12+12
layers, 1.3B parameters with a 32k vocabulary). Run it with
XLA_FLAGS=--xla_force_host_platform_device_count=8 for (a) on CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from transformer import TransformerConfig
from transformer.model import encoder_decoder as model_lib
from transformer.parallel import sharding
from transformer.training import steps as training

MODELS = {
  'tiny': dict(d_model=64, num_heads=4, d_ff=256, num_encoder_layers=2, num_decoder_layers=2),
  'base': dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6),
  'big': dict(d_model=1024, num_heads=16, d_ff=4096, num_encoder_layers=6, num_decoder_layers=6),
  '1b': dict(d_model=2048, num_heads=32, d_ff=8192, num_encoder_layers=12, num_decoder_layers=12),
}
LAYOUTS = [(8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]


def abstract_train_state(config: TransformerConfig):
  """(graphdef, abstract TrainState, non-parameter state, optimizer) of `config`: shapes only."""
  graphdef, params, rest = model_lib.abstract_model(config)
  optimizer, _ = training.make_optimizer(config.d_model, warmup_steps=4000)
  state = training.TrainState(
    step=jax.ShapeDtypeStruct((), jnp.int32),
    params=params,
    opt_state=jax.eval_shape(optimizer.init, params),
    rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
  )
  return graphdef, state, rest, optimizer


def per_device_bytes(state, layout: tuple[int, int, int]) -> int:
  """The most bytes of `state` any device of the layout holds (from the shard shapes)."""
  mesh = sharding.make_mesh(layout, jax.devices()[: int(np.prod(layout))])
  placed = sharding.shardings(state, mesh)
  sizes = jax.tree.map(
    lambda x, where: int(np.prod(where.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize,
    state,
    placed,
  )
  return int(sum(jax.tree.leaves(sizes)))


def compile_step(config: TransformerConfig, rows: int, length: int) -> dict:
  """Trace + compile time and XLA's memory analysis of the train step on one device."""
  graphdef, state, rest, optimizer = abstract_train_state(config)
  step = training.make_train_step(graphdef, optimizer, label_smoothing=0.1)
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype)
    for k, v in common.synthetic_packed_batch(rows, length, config.vocab_size).items()
  }
  started = time.perf_counter()
  compiled = jax.jit(step).lower(state, rest, batch, jnp.float32(1e-3)).compile()
  seconds = time.perf_counter() - started
  memory = compiled.memory_analysis()
  return {
    'remat': config.remat,
    'compile_seconds': round(seconds, 1),
    'temp_bytes': int(memory.temp_size_in_bytes),
    'argument_bytes': int(memory.argument_size_in_bytes),
  }


def sharded_train_state(config: TransformerConfig, mode) -> tuple:
  """(graphdef, TrainState created directly in its shardings, rngs, optimizer): no device ever
  holds the whole state."""
  graphdef, abstract, rest, optimizer = abstract_train_state(config)

  def create():
    model = training.create_model(config, seed=0)
    return training.init_train_state(model, optimizer, seed=0)[1]

  where = sharding.shardings(abstract, mode.mesh)
  return graphdef, jax.jit(create, out_shardings=where)(), rest, optimizer


def fsdp_step_numbers(
  name: str, *, rows_per_device: int, length: int, steps: int, dtype: str, remat: str, vocab: int
) -> dict:
  """Step time, MFU and peak memory per device of `name` under FSDP over the local devices."""
  from transformer.model import flops
  from transformer.parallel import strategies as parallel

  config = TransformerConfig(
    vocab_size=vocab, max_positions=length, dtype=dtype, remat=remat, **MODELS[name]
  )
  devices = jax.local_devices()
  mode = parallel.make('gspmd', devices, mesh=(1, len(devices), 1))
  graphdef, state, rngs, optimizer = sharded_train_state(config, mode)
  step = mode.compile_train_step(
    training.make_train_step(graphdef, optimizer, label_smoothing=0.1, axis_name=None)
  )
  host = common.synthetic_packed_batch(rows_per_device * len(devices), length, vocab)
  batch, holder = mode.device_batch(host), {'state': state}

  def one_step():
    holder['state'], metrics = step(holder['state'], rngs, batch, 1e-4)
    return metrics

  median, _ = common.timed(one_step, steps, warmup=1)
  peak, source = flops.device_peak(dtype, len(devices))
  stats = [device.memory_stats() or {} for device in devices]
  return {
    'model': name,
    'parameters': int(sum(x.size for x in jax.tree.leaves(holder['state'].params))),
    'devices': len(devices),
    'device': devices[0].device_kind,
    'step_ms': 1e3 * median,
    'tokens_per_second': common.count_tokens(host) / median,
    'mfu': flops.train_step_flops(config, *host['inputs'].shape, length) / median / peak
    if peak
    else None,
    'peak_source': source,
    'state_bytes_per_device': max(sharding.per_device_bytes(holder['state']).values()),
    'peak_bytes_per_device': max((s.get('peak_bytes_in_use', 0) for s in stats), default=0) or None,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='big', choices=sorted(MODELS))
  parser.add_argument('--rows', type=int, default=8)
  parser.add_argument('--length', type=int, default=256)
  parser.add_argument('--vocab', type=int, default=32000)
  parser.add_argument(
    '--layers', type=int, default=None, help='layers per stack (default: the model)'
  )
  parser.add_argument('--json', action='store_true')
  parser.add_argument('--run', action='store_true', help='run steps under FSDP (accelerators)')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--remat', default='minimal', choices=('none', 'minimal', 'full'))
  parser.add_argument('--dtype', default='bfloat16')
  args = parser.parse_args()
  if args.run:
    numbers = fsdp_step_numbers(
      args.model,
      rows_per_device=args.rows,
      length=args.length,
      steps=args.steps,
      dtype=args.dtype,
      remat=args.remat,
      vocab=args.vocab,
    )
    print(json.dumps(numbers))
    return
  spec = dict(MODELS[args.model])
  if args.layers:
    spec.update(num_encoder_layers=args.layers, num_decoder_layers=args.layers)
  config = TransformerConfig(
    vocab_size=args.vocab, max_positions=args.length, scan_layers=args.scan_layers, **spec
  )
  _, state, _, _ = abstract_train_state(config)
  total = sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
  report = {'model': args.model, 'device': jax.devices()[0].device_kind, 'state_bytes': int(total)}
  report['layouts'] = {
    'x'.join(map(str, layout)): per_device_bytes(state, layout)
    for layout in LAYOUTS
    if np.prod(layout) <= jax.device_count()
  }
  report['remat'] = [
    compile_step(config.replace(remat=policy), args.rows, args.length)
    for policy in ('none', 'minimal', 'full')
  ]
  if args.json:
    print(json.dumps(report))
    return
  print(f'{args.model}: parameters + Adam moments {total / 2**20:,.0f} MiB')
  for layout, held in report['layouts'].items():
    print(f'  mesh {layout:>7} (data x fsdp x tensor): {held / 2**20:8,.0f} MiB per device')
  for row in report['remat']:
    print(
      f'  remat {row["remat"]:>7}: compile {row["compile_seconds"]:5.1f} s, '
      f'peak temporaries {row["temp_bytes"] / 2**20:,.0f} MiB ({args.rows} x {args.length} tokens)'
    )


if __name__ == '__main__':
  main()
