"""Average the parameters of a workdir's last checkpoints into a new checkpoint (the paper's
checkpoint averaging, §6.1: the last 5 for base, 20 for big).

    python -m transformer.average --workdir=DIR [--last=5]

The average is written to DIR/average/ (replacing an earlier one); translate reads it with
`--checkpoint=average`. Each averaged checkpoint is verified as a restore is (shapes, checksums).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
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
  from transformer import checkpoints, workdir

  try:
    model, _, _ = workdir.load_model(FLAGS.workdir)  # the shapes and dtypes to restore into
    checkpointer = checkpoints.Checkpointer(FLAGS.workdir, keep_best=False)
    try:
      from flax import nnx

      params, steps = checkpointer.average(nnx.state(model, nnx.Param), FLAGS.last)
      checkpointer.save_average(steps[-1], params, steps=steps)
    finally:
      checkpointer.close()
  except (OSError, ValueError, RuntimeError) as e:
    print(f'average: error: {e}', file=sys.stderr)
    return 2
  print(f'average: steps {steps} of {FLAGS.workdir} -> {FLAGS.workdir}/average (step {steps[-1]})')
  return 0


if __name__ == '__main__':
  app.run(main)
