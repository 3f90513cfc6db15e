"""Generated tokens/s: greedy with the KV cache, greedy recomputing the prefix, beam 4 with the cache.

    python -m benchmarks.decode_throughput [--config=A] [--dtype=float32|bfloat16] [--batch=32]
                                           [--length=64] [--json]

32 source sentences of length 64 (random tokens, untrained weights). Every variant generates
exactly `--length` tokens: the EOS embedding row is zeroed, so its logit (0) never beats the
largest of the random logits and no row stops early. tokens/s = batch × length / median time
(beam search counts the tokens of the returned hypotheses, not of every beam).
"""

from __future__ import annotations

import argparse
import json

import jax

from benchmarks import common
from transformer.decoding import search


def measure(
  name: str, dtype: str, batch: int, length: int, repeats: int, recompute: bool = True
) -> dict[str, dict[str, float]]:
  _, model, src = common.decoding_setup(name, batch, length, dtype)
  variants = {
    'greedy, KV cache': lambda: search.generate(model, src, beam_size=1, max_new_tokens=length),
    'beam 4, KV cache': lambda: search.generate(model, src, beam_size=4, max_new_tokens=length),
  }
  if recompute:
    variants['greedy, recompute prefix'] = lambda: search.generate_recompute(
      model, src, max_new_tokens=length
    )
  results = {}
  for variant, fn in variants.items():
    median, times = common.timed(fn, repeats)
    results[variant] = {
      'seconds_median': median,
      'seconds_min': min(times),
      'seconds_max': max(times),
      'tokens_per_second': batch * length / median,
    }
  return results


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--config', choices=sorted(common.CONFIGS), default='A')
  parser.add_argument('--dtype', choices=common.DTYPES, default='float32')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  results = measure(args.config, args.dtype, args.batch, args.length, args.repeats)
  print(
    f'config {args.config} ({args.dtype}): {args.batch} sentences, {args.length} generated '
    f'tokens each, on {jax.devices()[0].device_kind}'
  )
  for variant, r in results.items():
    print(
      f'  {variant:<26} {r["tokens_per_second"]:>10,.0f} tok/s   (median {r["seconds_median"] * 1e3:.0f} ms, '
      f'min {r["seconds_min"] * 1e3:.0f}, max {r["seconds_max"] * 1e3:.0f})'
    )
  speedup = (
    results['greedy, KV cache']['tokens_per_second']
    / results['greedy, recompute prefix']['tokens_per_second']
  )
  print(f'  cache speed-up (greedy): {speedup:.1f}x')
  if args.json:
    print(
      json.dumps(
        {'config': args.config, 'dtype': args.dtype, 'variants': results, 'cache_speedup': speedup}
      )
    )


if __name__ == '__main__':
  main()
