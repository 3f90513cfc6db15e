"""Times the project's real train step (the one train.py uses) on synthetic padded batches.

    python -m benchmarks.train_throughput --config=A|B|base|big [--dtype=float32|bfloat16]
                                          [--attention=reference|xla|cudnn] [--steps=10] [--json]

The step runs over every local device (shard_map), each device holding a batch of the config's
shape (`benchmarks.common.CONFIGS`); lengths are uniform in [0.6, 1] × length (about 20%
padding). tokens/s counts non-padding source + target tokens (and target tokens alone, as
fairseq-style numbers do); MFU = analytic model FLOP/s of those devices / their peak (on CPU a
2048³ `jnp.dot` in the run's dtype measured in the same run; accelerators: the data sheet's).
"""

from __future__ import annotations

import argparse
import json
import time

import jax

from benchmarks import common
from transformer.model import flops


def measure(
  name: str, dtype: str, attention: str = 'reference', steps: int = 10, warmup: int = 2
) -> dict:
  """Builds, compiles and times the train step; returns the numbers `main` prints."""
  timings = {}
  config, parallel, state, rngs, step, batch, host_batch = common.build_train_step(
    name, dtype, attention, timings=timings
  )
  start = time.perf_counter()
  compiled = step.lower(
    state, rngs, batch, common.LEARNING_RATE
  ).compile()  # trace + XLA compile of the first step
  timings['compile_seconds'] = time.perf_counter() - start
  start = time.perf_counter()
  state, metrics = compiled(state, rngs, batch, common.LEARNING_RATE)
  jax.block_until_ready(metrics)
  timings['first_run_seconds'] = time.perf_counter() - start
  holder = {'state': state}

  def one_step():
    holder['state'], metrics = compiled(holder['state'], rngs, batch, common.LEARNING_RATE)
    return metrics

  median, times = common.timed(one_step, steps, warmup=max(warmup - 1, 0))
  rows, length = host_batch['inputs'].shape
  model_flops = flops.train_step_flops(config, rows, length, length)
  peak, peak_source = flops.device_peak(config.dtype, parallel.num_replicas)
  return {
    'config': name,
    'dtype': dtype,
    'attention': attention,
    'device': jax.devices()[0].device_kind,
    'devices': parallel.num_replicas,
    'step_ms_median': 1e3 * median,
    'step_ms_min': 1e3 * min(times),
    'step_ms_max': 1e3 * max(times),
    'tokens_per_second': common.count_tokens(host_batch) / median,
    'target_tokens_per_second': common.count_tokens(host_batch, ('targets',)) / median,
    'model_tflops_per_second': model_flops / median / 1e12,
    'peak_tflops': peak / 1e12,
    'peak_source': peak_source,
    'mfu': model_flops / median / peak if peak else None,
    **timings,
    'first_step_seconds': sum(timings.values()),
  }


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--config', choices=sorted(common.CONFIGS), default='A')
  parser.add_argument('--dtype', choices=common.DTYPES, default='float32')
  parser.add_argument('--attention', choices=('reference', 'xla', 'cudnn'), default='reference')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  r = measure(args.config, args.dtype, args.attention, args.steps, args.warmup)
  print(
    f'config {r["config"]} ({r["dtype"]}, {r["attention"]} attention) on {r["devices"]} x {r["device"]}'
  )
  print(
    f'  step time   median {r["step_ms_median"]:.1f} ms  (min {r["step_ms_min"]:.1f}, '
    f'max {r["step_ms_max"]:.1f}; {args.steps} steps)'
  )
  print(
    f'  tokens/s    {r["tokens_per_second"]:,.0f} source + target, '
    f'{r["target_tokens_per_second"]:,.0f} target'
  )
  print(
    f'  model       {r["model_tflops_per_second"]:.3f} TFLOP/s; peak {r["peak_tflops"]:.3f} '
    f'TFLOP/s ({r["peak_source"]})'
  )
  if r['mfu'] is not None:
    print(f'  MFU         {100 * r["mfu"]:.1f}%')
  print(
    f'  first step  {r["first_step_seconds"]:.1f} s: model + optimizer init '
    f'{r["init_seconds"]:.1f} s, trace + compile {r["compile_seconds"]:.1f} s, '
    f'first run {r["first_run_seconds"]:.1f} s'
  )
  if args.json:
    print(json.dumps(r))


if __name__ == '__main__':
  main()
