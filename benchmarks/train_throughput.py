"""Times the project's real train step (the one train.py uses) on a synthetic padded batch.

    python benchmarks/train_throughput.py --config=A|B [--dtype=float32|bfloat16] [--steps=10] [--json]

Config A: the CPU default's scale (vocab 8000, d_model 256, 4 heads, d_ff 1024, 3+3 layers,
batch 32, length 64). Config B: Transformer-base dims (vocab 32000, d_model 512, 8 heads,
d_ff 2048, 6+6 layers, batch 16, length 64). Lengths are uniform in [39, 64] (about 20% padding).
tokens/s counts non-padding source + target tokens; MFU = analytic model FLOP/s / peak (on CPU the
peak is a 2048³ jnp.dot in the run's dtype measured in the same run; on GPU the card's dense bf16
peak).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from transformer import flops, training  # noqa: E402
from transformer.model import TransformerConfig  # noqa: E402

# Compute dtypes the benchmarks offer (float32 parameters either way).
DTYPES = ('float32', 'bfloat16')

CONFIGS = {
    'A': dict(model=dict(vocab_size=8000, d_model=256, num_heads=4, d_ff=1024,
                         num_encoder_layers=3, num_decoder_layers=3), batch=32, length=64),
    'B': dict(model=dict(vocab_size=32000, d_model=512, num_heads=8, d_ff=2048,
                         num_encoder_layers=6, num_decoder_layers=6), batch=16, length=64),
}


def synthetic_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  """One example per row, lengths uniform in [0.6·length, length], EOS last, PAD after."""
  rng = np.random.default_rng(seed)
  out = {}
  for name in ('inputs', 'targets'):
    lengths = rng.integers(int(0.6 * length), length + 1, size=batch)
    tokens = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
    position = np.arange(length)[None, :]
    tokens[position == lengths[:, None] - 1] = 2  # EOS
    valid = position < lengths[:, None]
    out[name] = np.where(valid, tokens, 0).astype(np.int32)
    out[f'{name}_segment_ids'] = valid.astype(np.int32)
    out[f'{name}_positions'] = np.where(valid, position, 0).astype(np.int32)
  return out


def build_step(name: str, dtype: str, attention: str = 'reference', timings: dict | None = None):
  """The config, synthetic batch, device state and the jitted train step; `timings` (if given)
  receives the seconds spent creating the model and optimizer state."""
  start = time.perf_counter()
  spec = CONFIGS[name]
  config = TransformerConfig(**spec['model'], dropout_rate=0.1, dtype=dtype,
                             attention_implementation=attention, max_length=max(256, spec['length']))
  model = training.create_model(config, seed=0)
  optimizer, _ = training.make_optimizer(config.d_model, warmup_steps=4000)
  graphdef, state, rngs = training.init_train_state(model, optimizer, seed=0)
  parallel = training.DataParallel('none')
  step = parallel.compile_train_step(training.make_train_step(graphdef, optimizer, label_smoothing=0.1))
  batch = parallel.device_batch(synthetic_batch(spec['batch'], spec['length'], config.vocab_size))
  state = jax.block_until_ready(parallel.device_state(state))
  if timings is not None:
    timings['init_seconds'] = time.perf_counter() - start
  return config, spec, state, rngs, step, batch


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', choices=sorted(CONFIGS), default='A')
  parser.add_argument('--dtype', choices=DTYPES, default='float32')
  parser.add_argument('--attention', choices=('reference', 'xla', 'cudnn'), default='reference')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()

  timings = {}
  config, spec, state, rngs, step, batch = build_step(args.config, args.dtype, args.attention, timings)
  start = time.perf_counter()
  compiled = step.lower(state, rngs, batch).compile()  # trace + XLA compile of the first step
  timings['compile_seconds'] = time.perf_counter() - start
  start = time.perf_counter()
  state, metrics = compiled(state, rngs, batch)
  jax.block_until_ready(metrics)
  timings['first_run_seconds'] = time.perf_counter() - start
  step = compiled
  for _ in range(args.warmup - 1):
    state, metrics = step(state, rngs, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = step(state, rngs, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  tokens = int((np.asarray(batch['inputs_segment_ids']) > 0).sum() + (np.asarray(batch['targets_segment_ids']) > 0).sum())
  model_flops = flops.train_step_flops(config, spec['batch'], spec['length'], spec['length'])
  peak, peak_source = flops.device_peak(config.dtype)
  result = {
      'config': args.config, 'dtype': args.dtype, 'attention': args.attention,
      'device': jax.devices()[0].device_kind, 'step_ms_median': 1e3 * median,
      'step_ms_min': 1e3 * min(times), 'step_ms_max': 1e3 * max(times),
      'tokens_per_second': tokens / median, 'model_tflops_per_second': model_flops / median / 1e12,
      'peak_tflops': peak / 1e12, 'peak_source': peak_source,
      'mfu': model_flops / median / peak if peak else None, **timings,
      'first_step_seconds': sum(timings.values()),
  }
  print(f"config {args.config} ({args.dtype}, {args.attention} attention) on {result['device']}")
  print(f"  step time   median {result['step_ms_median']:.1f} ms  (min {result['step_ms_min']:.1f}, max {result['step_ms_max']:.1f}; {args.steps} steps)")
  print(f"  tokens/s    {result['tokens_per_second']:,.0f}  ({tokens} non-padding tokens per step)")
  print(f"  model       {result['model_tflops_per_second']:.3f} TFLOP/s; peak {result['peak_tflops']:.3f} TFLOP/s ({peak_source})")
  if result['mfu'] is not None:
    print(f"  MFU         {100 * result['mfu']:.1f}%")
  print(f"  first step  {result['first_step_seconds']:.1f} s: model + optimizer init "
        f"{timings['init_seconds']:.1f} s, trace + compile {timings['compile_seconds']:.1f} s, "
        f"first run {timings['first_run_seconds']:.1f} s")
  if args.json:
    print(json.dumps(result))


if __name__ == '__main__':
  main()
