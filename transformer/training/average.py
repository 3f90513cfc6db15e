"""Checkpoint averaging (the paper's §6.1: the last 5 checkpoints for base, 20 for big): the mean
of a workdir's last checkpoints, saved as its 'average' checkpoint (DIR/average/, replacing an
earlier one). Each averaged checkpoint is verified as a restore is (shapes, checksums). The
training loop uses these functions with `config.average_last`; `python -m transformer.average`
runs them on a finished workdir.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from transformer.training import checkpoints


def average_checkpoints(
  checkpointer: checkpoints.Checkpointer, target_params: Any, last: int
) -> tuple[Any, list[int]]:
  """The mean of the parameters of the `last` newest checkpoints (summed in float64, returned in
  the parameters' dtypes), each verified as a restore is; and their steps."""
  steps = checkpointer.all_steps()[-last:]
  if len(steps) < last:
    raise checkpoints.CheckpointError(
      f'averaging {last} checkpoints needs {last}; {checkpointer.latest.directory} has {steps}'
    )
  total = None
  for step in steps:
    params = checkpointer.params_at(step, target_params)
    as_float64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    total = as_float64 if total is None else jax.tree.map(np.add, total, as_float64)
  mean = jax.tree.map(lambda t, x: (t / len(steps)).astype(np.asarray(x).dtype), total, params)
  return mean, steps


def save_average(
  checkpointer: checkpoints.Checkpointer,
  params: Any,
  steps: Sequence[int],
  bleu: float | None = None,
) -> None:
  """Saves averaged parameters as the workdir's 'average' checkpoint (at the newest step)."""
  record = checkpoints.Record(bleu=bleu, averaged_steps=tuple(steps))
  checkpointer.save_params('average', steps[-1], params, record)
