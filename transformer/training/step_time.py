"""The measured time of one training step, for a run whose length the time budget sets.

With `num_train_steps=None` the run trains until `max_train_minutes` ends, and the dropout the
recipe chooses depends on how many passes over the data that allows (`transformer.training.recipe`). So
before training the run times a few steps of its compiled train step on full rows (after one step
that compiles it), on a copy of the state, at learning rate 0. The time is kept in the workdir
(`step_time.json`), so that a resumed run makes the same plan; every process uses process 0's.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from transformer import _atomic
from transformer.parallel import distributed

FILE = 'step_time.json'


def full_rows(rows: int, length: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`[rows, length]` rows of one example each, every slot a token (the packed rows' upper
  bound): `inputs`, `targets`, their segment ids and positions."""
  tokens = np.random.default_rng(seed).integers(3, vocab_size, size=(2, rows, length))
  batch = {}
  for name, side in zip(('inputs', 'targets'), tokens, strict=True):
    batch[name] = side.astype(np.int32)
    batch[f'{name}_segment_ids'] = np.ones((rows, length), np.int32)
    batch[f'{name}_positions'] = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
  return batch


def measure(
  parallel: Any,
  train_step: Callable,
  host_state: Any,
  rngs: Any,
  batch: dict[str, np.ndarray],
  repeats: int = 3,
) -> float:
  """Seconds per step of `train_step` (compiled for `parallel`) on this process's `batch`, after
  one step that compiles it; `host_state` is copied (the steps donate theirs) and left as it is."""
  state = parallel.device_state(jax.tree.map(lambda x: x.copy(), host_state))
  placed = parallel.device_batch(batch)
  state, metrics = train_step(state, rngs, placed, 0.0)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(repeats):
    state, metrics = train_step(state, rngs, placed, 0.0)
  jax.block_until_ready(metrics)
  return float(distributed.process_zero_value(np.float32((time.perf_counter() - start) / repeats)))


def _saved(path: str) -> float | None:
  try:
    with open(path, encoding='utf-8') as f:
      return float(json.load(f)['seconds_per_step'])
  except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: measured again
    return None


def saved_or_measured(workdir: str, measure_now: Callable[[], float]) -> tuple[float, bool]:
  """(seconds per step, whether measured now): the workdir's (process 0 reads it), else
  `measure_now()` (every process), kept there."""
  path = os.path.join(workdir, FILE)
  saved = _saved(path) if jax.process_index() == 0 else None
  shared = float(distributed.process_zero_value(np.float32(-1.0 if saved is None else saved)))
  saved = None if shared < 0 else shared
  if saved is not None:
    return saved, False
  seconds = measure_now()
  if jax.process_index() == 0:
    _atomic.write_json(path, {'seconds_per_step': seconds})
  return seconds, True
