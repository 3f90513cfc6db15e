"""The held-out settings of docs/results.md: corpora cut from the embedded one that differ from
it in size, direction and sentence length, written as local TSV files.

    python -m benchmarks.recipe_corpora --out=DIR

writes DIR/<name>/{train,validation,test}.tsv and prints, for each, the train.py command that
trains the default recipe on it:

    sub15k  15,000 training pairs drawn at random (seed 0), en -> fr
    sub9k   9,000 training pairs, en -> fr (about 6 passes in 1,000 steps: dropout's middle band)
    sub5k   5,000 training pairs, en -> fr
    fr-en   the 15,000 pairs of sub15k, fr -> en (the other direction)
    short   the pairs whose sides both have at most 15 words (train, validation and test), en -> fr
"""

from __future__ import annotations

import argparse
import gzip
import os

import numpy as np

from transformer.input_pipeline import corpus


def _read(split: str) -> tuple[list[str], list[tuple[str, str]]]:
  path = os.path.join(corpus.embedded_corpus_dir(), f'{split}.tsv.gz')
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    header = f.readline().rstrip('\n').split('\t')
    rows = [line.rstrip('\n').split('\t') for line in f if line.strip()]
  en, fr = header.index('en'), header.index('fr')
  return header, [(row[en], row[fr]) for row in rows]


def _write(path: str, pairs: list[tuple[str, str]]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write('en\tfr\n')
    f.writelines(f'{en}\t{fr}\n' for en, fr in pairs)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  splits = {split: _read(split)[1] for split in ('train', 'validation', 'test')}
  order = np.random.default_rng(0).permutation(len(splits['train']))
  short = lambda pairs: [p for p in pairs if max(len(p[0].split()), len(p[1].split())) <= 15]
  settings = {
    'sub15k': ({'train': [splits['train'][i] for i in order[:15000]]}, 'en', 'fr'),
    'sub9k': ({'train': [splits['train'][i] for i in order[:9000]]}, 'en', 'fr'),
    'sub5k': ({'train': [splits['train'][i] for i in order[:5000]]}, 'en', 'fr'),
    'fr-en': ({'train': [splits['train'][i] for i in order[:15000]]}, 'fr', 'en'),
    'short': ({split: short(pairs) for split, pairs in splits.items()}, 'en', 'fr'),
  }
  for name, (chosen, source, target) in settings.items():
    files = {}
    for split in ('train', 'validation', 'test'):
      files[split] = os.path.join(args.out, name, f'{split}.tsv')
      _write(files[split], chosen.get(split, splits[split]))
    sizes = ', '.join(f'{s} {len(chosen.get(s, splits[s])):,}' for s in files)
    print(f'# {name}: {sizes}')
    local = ' '.join(f'--config.local_files.{s}={p}' for s, p in files.items())
    print(
      f'python train.py --workdir=runs/{name} --config.dataset=local '
      f'--config.source_lang={source} --config.target_lang={target} {local}'
    )


if __name__ == '__main__':
  main()
