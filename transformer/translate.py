"""Translate text with a trained workdir: one output line per input line, in order.

    python -m transformer.translate --workdir=DIR [--beam_size=4] [--input=FILE] [--checkpoint=best]

Reads FILE (or stdin), batches internally, writes to stdout. An empty input line gives an empty
output line. A line longer than the model's max_length tokens is truncated to fit, and stderr
says which line.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Training workdir (config.json, tokenizer.model, checkpoints/).')
flags.DEFINE_string('input', None, 'File to translate, one sentence per line (default: stdin).')
flags.DEFINE_integer('beam_size', 4, 'Beam size (1 = greedy).')
flags.DEFINE_float('length_penalty', 0.6, 'GNMT length-penalty exponent alpha.')
flags.DEFINE_integer('batch_size', 32, 'Sentences decoded together.')
flags.DEFINE_integer('extra_length', 50, 'Generate at most source length + this many tokens.')
flags.DEFINE_enum('checkpoint', 'latest', ['latest', 'best'], 'Which checkpoint to load.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  if FLAGS.beam_size < 1:
    raise app.UsageError('--beam_size must be >= 1')
  from transformer import evaluation, trainer
  try:
    model, tokenizer, step = trainer.load_model_from_workdir(FLAGS.workdir, which=FLAGS.checkpoint)
  except (FileNotFoundError, ValueError) as e:
    print(f'translate: {e}', file=sys.stderr)
    return 2
  print(f'translate: {FLAGS.checkpoint} checkpoint of {FLAGS.workdir} (step {step})', file=sys.stderr)
  if FLAGS.input:
    with open(FLAGS.input, encoding='utf-8') as f:
      lines = f.read().splitlines()
  else:
    lines = sys.stdin.read().splitlines()
  outputs = evaluation.translate(model, tokenizer, lines, beam_size=FLAGS.beam_size,
                                 alpha=FLAGS.length_penalty, batch_size=FLAGS.batch_size,
                                 extra_length=FLAGS.extra_length)
  sys.stdout.write(''.join(line + '\n' for line in outputs))
  return 0


def run():
  app.run(main)


if __name__ == '__main__':
  run()
