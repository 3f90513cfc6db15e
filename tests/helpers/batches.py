"""Small packed batches for the tests of steps and layouts."""

from __future__ import annotations

import dataclasses

import numpy as np

from transformer.input_pipeline import pipeline


def packed_batch(
  seed: int = 0, rows: int = 8, length: int = 24, vocab: int = 64
) -> dict[str, np.ndarray]:
  """`[rows, length]` rows packed with 16 examples of uneven lengths (and uneven padding per
  row), tokens below `vocab`."""
  rng = np.random.default_rng(seed)
  side = lambda: [list(rng.integers(4, vocab, rng.integers(2, 9))) for _ in range(16)]
  pairs = pipeline.TokenizedPairs.from_lists(side(), side(), {'inputs': [2], 'targets': [2]})
  placement = pipeline.first_fit(pairs.lengths('inputs'), pairs.lengths('targets'), length)
  assert placement.rows <= rows
  return pipeline.assemble_rows(pairs, dataclasses.replace(placement, rows=rows), length, 0)
