"""Throughput, start-up time and memory of the training input pipeline, as train.py builds it.

    python -m benchmarks.input_pipeline [--json] [--batch_size=96] [--max_length=256]
                                        [--workers=0] [--batches=200]
                                        [--synthetic_pairs=N] [--short] [--workdir=DIR]

Without `--synthetic_pairs` it reads the embedded corpus. With it, it writes a generated corpus of
N pairs (sentence lengths drawn like real text's, 5–60 words; `--short`: 5–12 words) as a TSV,
prepares it (`prepare_seconds`, once), then measures in a fresh process the time from process
start to the first batch with the data already prepared (`startup_seconds`). It prints:

  loader_tokens_per_second_per_core  non-padding source + target tokens per second of packed
                                     batches, divided by the processes producing them
                                     (`--workers`, or 1)
  padding_fraction                   the share of the batch that is padding
  prepare_seconds, startup_seconds   with --synthetic_pairs
  peak_rss_gb                        the largest resident memory of this process and its
                                     children, over preparation and loading
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import common

_SYLLABLES = 'ka to ri ne mu sa lo vi de pa ch th an er in on st re le ma'.split()


def _words(count: int, rng: np.random.Generator) -> list[str]:
  """A made-up vocabulary of `count` words of 1-4 syllables."""
  lengths = rng.integers(1, 5, size=count)
  picks = rng.integers(0, len(_SYLLABLES), size=int(lengths.sum()))
  words, at = [], 0
  for n in lengths:
    words.append(''.join(_SYLLABLES[i] for i in picks[at : at + n]))
    at += n
  return words


def write_corpus(path: str, pairs: int, *, short: bool = False, seed: int = 0) -> None:
  """A TSV of `pairs` made-up sentence pairs: Zipf-distributed words, lengths like real text's."""
  rng = np.random.default_rng(seed)
  vocabulary = np.array(_words(30000, rng))
  low, high = (5, 12) if short else (5, 60)
  pool_size = min(pairs, 200_000)
  ranks = np.minimum(rng.zipf(1.2, size=(pool_size, 2, high)), len(vocabulary)) - 1
  lengths = rng.integers(low, high + 1, size=(pool_size, 2))
  pool = [
    tuple(' '.join(vocabulary[ranks[i, side, : lengths[i, side]]]) for side in (0, 1))
    for i in range(pool_size)
  ]
  with open(path, 'w', encoding='utf-8') as f:
    f.write('id\tsrc\ttgt\n')
    for start in range(0, pairs, 100_000):
      picks = rng.integers(0, pool_size, size=min(100_000, pairs - start))
      f.write(''.join(f'{start + k}\t{pool[p][0]}\t{pool[p][1]}\n' for k, p in enumerate(picks)))


def peak_rss_gb() -> float:
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return max(own, children) / 2**20  # KiB -> GiB


def _tokenizer(source, path: str, vocab_size: int):
  from transformer.input_pipeline import tokenizer as tokenizer_lib
  from transformer.training import data as run_data

  if os.path.exists(path):
    return tokenizer_lib.Tokenizer(path)
  sentences = run_data.sample_training_sentences(source, 40_000, seed=0)
  return tokenizer_lib.train_tokenizer(path, sentences, vocab_size=vocab_size)


def measure_loader(source, tokenizer_path: str, args) -> dict:
  """Packed batches per second from a TrainBatches over `source`, after the first batch."""
  from transformer.input_pipeline import pipeline
  from transformer.input_pipeline.tokenizer import Tokenizer

  batches = pipeline.TrainBatches(
    source,
    functools.partial(Tokenizer, tokenizer_path),
    batch_size=args.batch_size,
    max_length=args.max_length,
    seed=0,
    workers=args.workers,
  )
  next(batches)  # start-up: workers, the first chunks
  tokens, examples, start = 0, 0, time.perf_counter()
  for _ in range(args.batches):
    batch = next(batches)
    tokens += common.count_tokens(batch)
    examples += int(batch['inputs_segment_ids'].max(-1).sum())
  seconds = time.perf_counter() - start
  slots = args.batches * args.batch_size * args.max_length * 2
  return {
    'loader_tokens_per_second': tokens / seconds,
    'loader_tokens_per_second_per_core': tokens / seconds / max(args.workers, 1),
    'loader_batches_per_second': args.batches / seconds,
    'padding_fraction': 1 - tokens / slots,
    'examples_per_row': examples / (args.batches * args.batch_size),
  }


def _probe_startup(args) -> None:
  """In a fresh process: open the prepared data, build the batches, print when the first is ready."""
  from transformer.input_pipeline import pipeline, sources
  from transformer.input_pipeline.tokenizer import Tokenizer

  # As train.py opens it: the files' fingerprint is computed and the prepared copy found.
  source = sources.prepare_local(args.prepared, 'src', 'tgt', args.cache)
  batches = pipeline.TrainBatches(
    source,
    functools.partial(Tokenizer, args.tokenizer),
    batch_size=args.batch_size,
    max_length=args.max_length,
    seed=0,
    workers=args.workers,
  )
  next(batches)
  print(json.dumps({'first_batch_at': time.time(), 'peak_rss_gb': peak_rss_gb()}))


def synthetic(args, folder: str) -> tuple[object, dict]:
  """Writes, prepares and start-up-probes a generated corpus of `args.synthetic_pairs` pairs."""
  from transformer.input_pipeline import sources

  tsv = os.path.join(
    folder, f'synthetic-{args.synthetic_pairs}{"-short" if args.short else ""}.tsv'
  )
  if not os.path.exists(tsv):
    write_corpus(tsv, args.synthetic_pairs, short=args.short)
  start = time.perf_counter()
  prepared = sources.prepare_local(tsv, 'src', 'tgt', os.path.join(folder, 'prepared'))
  numbers = {'prepare_seconds': time.perf_counter() - start, 'pairs': len(prepared)}
  tokenizer = _tokenizer(prepared, os.path.join(folder, 'tokenizer.model'), args.vocab_size)
  command = [
    sys.executable,
    '-m',
    'benchmarks.input_pipeline',
    '--probe_startup',
    f'--prepared={tsv}',
    f'--cache={os.path.join(folder, "prepared")}',
    f'--tokenizer={tokenizer.path}',
    f'--batch_size={args.batch_size}',
    f'--max_length={args.max_length}',
    f'--workers={args.workers}',
  ]
  launched = time.time()
  probe = json.loads(
    subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
  )
  numbers['startup_seconds'] = probe['first_batch_at'] - launched
  numbers['startup_peak_rss_gb'] = probe['peak_rss_gb']
  return prepared, numbers


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--batch_size', type=int, default=96)
  parser.add_argument('--max_length', type=int, default=256)
  parser.add_argument('--workers', type=int, default=0)
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument(
    '--vocab_size', type=int, default=0, help='SentencePiece pieces (0: 4000, or 2000 with --short)'
  )
  parser.add_argument('--synthetic_pairs', type=int, default=0)
  parser.add_argument('--short', action='store_true', help='synthetic sentences of 5-12 words')
  parser.add_argument(
    '--workdir', default='', help='where generated data is kept (default: a temporary folder)'
  )
  parser.add_argument('--tfds_data_dir', default='')
  parser.add_argument('--json', action='store_true')
  parser.add_argument('--probe_startup', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--prepared', help=argparse.SUPPRESS)
  parser.add_argument('--tokenizer', help=argparse.SUPPRESS)
  parser.add_argument('--cache', help=argparse.SUPPRESS)
  args = parser.parse_args()
  # A 40,000-sentence sample of 5-12-word sentences holds fewer than 4,000 distinct pieces.
  args.vocab_size = args.vocab_size or (2000 if args.short else 4000)
  if args.probe_startup:
    _probe_startup(args)
    return
  from transformer.input_pipeline import sources

  folder = args.workdir or tempfile.mkdtemp(prefix='input-pipeline-')
  os.makedirs(folder, exist_ok=True)
  result = {'batch_size': args.batch_size, 'max_length': args.max_length, 'workers': args.workers}
  if args.synthetic_pairs:
    source, numbers = synthetic(args, folder)
    result.update(numbers)
  else:
    source = sources.TfdsPairs('bible_en_fr', 'train', 'en', 'fr', args.tfds_data_dir or None)
  tokenizer = _tokenizer(source, os.path.join(folder, 'tokenizer.model'), args.vocab_size)
  result.update(measure_loader(source, tokenizer.path, args))
  result['peak_rss_gb'] = max(peak_rss_gb(), result.pop('startup_peak_rss_gb', 0.0))
  print(
    f'{source.description}: {len(source):,} pairs; batches {args.batch_size} x {args.max_length}, '
    f'{args.workers} worker(s)'
  )
  for key, value in result.items():
    print(f'  {key:<36} {value:,.3f}' if isinstance(value, float) else f'  {key:<36} {value}')
  if args.json:
    print(json.dumps(result))


if __name__ == '__main__':
  main()
