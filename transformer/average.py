"""Checkpoint averaging (the paper's §6.1: the last 5 checkpoints for base, 20 for big): the mean
of a workdir's last checkpoints, saved as its 'average' checkpoint.

    python -m transformer.average --workdir=DIR [--last=5]

The average is written to DIR/average/ (replacing an earlier one); translate reads it with
`--checkpoint=average`. Each averaged checkpoint is verified as a restore is (shapes, checksums).
The training loop uses the same functions with `config.average_last`.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from absl import app, flags, logging
import jax
import numpy as np

from transformer import checkpoints

FLAGS = flags.FLAGS


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
    params = checkpointer.restore_params(step, target_params)
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
  contents: dict[str, Any] = {'averaged_steps': list(steps)}
  if bleu is not None:
    contents['metrics'] = {'bleu': float(bleu)}
  checkpointer.save_params('average', steps[-1], params, contents)


def _define_flags() -> None:
  """The command's flags (defined when it runs, so that importing the module defines none)."""
  flags.DEFINE_string('workdir', None, 'Training workdir.')
  flags.DEFINE_integer('last', 5, 'How many of the newest checkpoints to average.')


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  if FLAGS.last < 1:
    raise app.UsageError(f'--last must be >= 1, got {FLAGS.last}')
  logging.set_verbosity(logging.WARNING)
  from flax import nnx

  from transformer import workdir

  try:
    # The shapes and dtypes to restore into, in the checkpoints' own layout.
    model, _, _ = workdir.load_model(FLAGS.workdir, unroll=False)
    checkpointer = checkpoints.Checkpointer(FLAGS.workdir, keep_best=False)
    try:
      params, steps = average_checkpoints(checkpointer, nnx.state(model, nnx.Param), FLAGS.last)
      save_average(checkpointer, params, steps)
    finally:
      checkpointer.close()
  except (OSError, ValueError, RuntimeError) as e:
    print(f'average: error: {e}', file=sys.stderr)
    return 2
  print(f'average: steps {steps} of {FLAGS.workdir} -> {FLAGS.workdir}/average (step {steps[-1]})')
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(main)
