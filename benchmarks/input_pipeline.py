"""Tokens/s of the input pipeline: packed training batches of the embedded corpus, as train.py builds them.

    python -m benchmarks.input_pipeline [--batch_size=16] [--max_length=128] [--batches=400] [--json]

Measures (1) tokenizing the training split (once per run) and (2) the grain loader producing
packed batches (shuffle, pack, batch) on one host, in real (non-padding) source + target tokens per
second, to compare with the train step's tokens/s (`python -m benchmarks.train_throughput`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks import common
from transformer.input_pipeline import datasets, pipeline
from transformer.input_pipeline import tokenizer as tokenizer_lib


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--max_length', type=int, default=128)
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--batches', type=int, default=400)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()

  pairs, report = datasets.read_split('bible_en_fr', 'train', 'en', 'fr')
  model_path = os.path.join(tempfile.mkdtemp(), 'tokenizer.model')
  start = time.perf_counter()
  tokenizer = tokenizer_lib.train_tokenizer(
    model_path, (t for p in pairs for t in p), vocab_size=args.vocab_size
  )
  train_seconds = time.perf_counter() - start
  start = time.perf_counter()
  tokenized, stats = pipeline.tokenize_pairs(pairs, tokenizer, max_length=args.max_length)
  tokenize_seconds = time.perf_counter() - start

  iterator = iter(
    pipeline.train_dataset(
      tokenized, batch_size=args.batch_size, max_length=args.max_length, seed=0
    )
  )
  next(iterator)  # start-up
  tokens, start = 0, time.perf_counter()
  for _ in range(args.batches):
    tokens += common.count_tokens(next(iterator))
  loader_seconds = time.perf_counter() - start
  result = {
    'pairs': len(pairs),
    'tokenizer_train_seconds': train_seconds,
    'tokenize_tokens_per_second': stats.tokens / tokenize_seconds,
    'loader_tokens_per_second': tokens / loader_seconds,
    'loader_batches_per_second': args.batches / loader_seconds,
    'padding_fraction': 1 - tokens / (args.batches * args.batch_size * args.max_length * 2),
  }
  print(f'{report}; {stats}')
  print(f'  tokenizer training      {train_seconds:8.1f} s (once per workdir)')
  print(
    f'  tokenizing the split    {result["tokenize_tokens_per_second"]:>12,.0f} tok/s (once per run)'
  )
  print(
    f'  packed batches (grain)  {result["loader_tokens_per_second"]:>12,.0f} tok/s '
    f'({result["loader_batches_per_second"]:.0f} batches/s of {args.batch_size}x{args.max_length}; '
    f'{100 * result["padding_fraction"]:.1f}% padding)'
  )
  if args.json:
    print(json.dumps(result))


if __name__ == '__main__':
  main()
