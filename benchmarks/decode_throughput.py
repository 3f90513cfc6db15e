"""Generated tokens/s: greedy with the KV cache, greedy recomputing the prefix, beam 4 with the cache.

    python benchmarks/decode_throughput.py [--config=A] [--dtype=float32|bfloat16] [--batch=32]
                                           [--length=64] [--json]

32 source sentences of length 64 (random tokens, untrained weights). Every variant generates
exactly `--length` tokens: the EOS embedding row is zeroed, so its logit (0) never beats the
largest of 8,000 random logits and no row stops early. tokens/s = batch × length / median time
(beam search counts the tokens of the returned hypotheses, not of every beam).
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
from flax import nnx  # noqa: E402

from benchmarks.train_throughput import CONFIGS, DTYPES  # noqa: E402
from transformer import Transformer, TransformerConfig, decode  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, list[float]]:
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def decoding_setup(name: str, batch: int, length: int, dtype: str = 'float32'
                   ) -> tuple[TransformerConfig, Transformer, np.ndarray]:
  """An untrained model of config `name` computing in `dtype` that never emits EOS, and
  `[batch, length]` random sources.

  The EOS embedding row is zeroed: its logit (0) never beats the largest random logit, so every
  decoder generates exactly the requested number of tokens.
  """
  config = TransformerConfig(**CONFIGS[name]['model'], dropout_rate=0.0, max_length=256, dtype=dtype)
  model = Transformer(config, rngs=nnx.Rngs(0))
  model.eval()
  model.embed.table.embedding[...] = model.embed.table.embedding[...].at[config.eos_id].set(0.0)
  src = np.random.default_rng(0).integers(3, config.vocab_size, size=(batch, length)).astype(np.int32)
  src[:, -1] = config.eos_id
  return config, model, src


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', choices=sorted(CONFIGS), default='A')
  parser.add_argument('--dtype', choices=DTYPES, default='float32')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()

  config, model, src = decoding_setup(args.config, args.batch, args.length, args.dtype)

  variants = {
      'greedy, KV cache': lambda: decode.generate(model, src, beam_size=1, max_length=args.length),
      'greedy, recompute prefix': lambda: decode.generate_recompute(model, src, max_length=args.length),
      'beam 4, KV cache': lambda: decode.generate(model, src, beam_size=4, max_length=args.length),
  }
  results = {}
  print(f'config {args.config} ({args.dtype}): {args.batch} sentences, {args.length} generated tokens each, on {jax.devices()[0].device_kind}')
  for name, fn in variants.items():
    median, times = timed(fn, args.repeats)
    tokens_per_second = args.batch * args.length / median
    results[name] = {'seconds_median': median, 'tokens_per_second': tokens_per_second}
    print(f'  {name:<26} {tokens_per_second:>10,.0f} tok/s   (median {median * 1e3:.0f} ms, min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f})')
  speedup = results['greedy, KV cache']['tokens_per_second'] / results['greedy, recompute prefix']['tokens_per_second']
  print(f'  cache speed-up (greedy): {speedup:.1f}x')
  if args.json:
    print(json.dumps({'config': args.config, 'dtype': args.dtype, 'variants': results, 'cache_speedup': speedup}))


if __name__ == '__main__':
  main()
