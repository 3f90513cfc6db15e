"""The checkpoint-averaging command: the mean of a workdir's last checkpoints
(`transformer.training.average`), saved as its 'average' checkpoint.

    python -m transformer.average --workdir=DIR [--last=5]

The average is written to DIR/average/ (replacing an earlier one); translate reads it with
`--checkpoint=average`.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from transformer.training import average, checkpoints

FLAGS = flags.FLAGS


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

  from transformer.training import workdir

  try:
    # The shapes and dtypes to restore into, in the checkpoints' own layout.
    model, _, _ = workdir.load_model(FLAGS.workdir, unroll=False)
    checkpointer = checkpoints.Checkpointer(FLAGS.workdir, keep_best=False)
    try:
      params, steps = average.average_checkpoints(
        checkpointer, nnx.state(model, nnx.Param), FLAGS.last
      )
      average.save_average(checkpointer, params, steps)
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
