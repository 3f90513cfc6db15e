"""Translating text: `translate(model, tokenizer, sentences)`, and the command line over it.

    python -m transformer.translate --workdir=DIR [--beam_size=4] [--input=FILE] [--checkpoint=best]
    python -m transformer.translate --pretrained=DIR [--max_new_tokens=N] [--length_normalization=hf]

Reads FILE (or stdin) as UTF-8, one sentence per line (lines end at `\\n`, and a `\\r` before it
is dropped: nothing else splits a line), batches internally and writes one line per input line to
stdout. An empty input line gives an empty output line. A line longer than the model's
max_positions tokens is truncated to fit, and stderr says which line. Bad input (no such file,
invalid UTF-8, a closed stdin, bad flags) is reported in one line before the model is loaded.

The module imports neither JAX nor the model until there is something to translate, and its
flags exist only when it runs as the command (`run`), so other programs can import `translate`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from absl import app, flags, logging
import numpy as np

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command's flags (defined when it runs, not on import)."""
  flags.DEFINE_string(
    'workdir', None, 'Training workdir (config.json, tokenizer.model, checkpoints/).'
  )
  flags.DEFINE_string(
    'pretrained', None, 'A Hugging Face Marian (opus-mt) directory, instead of --workdir.'
  )
  flags.DEFINE_string('input', None, 'File to translate, one sentence per line (default: stdin).')
  flags.DEFINE_integer(
    'beam_size', None, "Beam size (1 = greedy); default 4, or a --pretrained model's num_beams."
  )
  flags.DEFINE_bool(
    'forced_eos',
    None,
    "End a sentence that reaches its limit with EOS (default: as a --pretrained model's "
    'generation config says; off for workdirs).',
  )
  flags.DEFINE_float('length_penalty', 0.6, 'Length-penalty exponent alpha.')
  flags.DEFINE_enum(
    'length_normalization',
    'gnmt',
    ['gnmt', 'hf', 'ctranslate2'],
    "Beam scores: log P / ((5 + len) / 6)^alpha ('gnmt'), or log P / len^alpha as "
    "transformers' generate ('hf') and CTranslate2 ('ctranslate2': also stops as it does).",
  )
  flags.DEFINE_integer(
    'max_new_tokens',
    None,
    'Generate at most this many tokens per sentence (instead of source length + --extra_length).',
  )
  flags.DEFINE_integer('batch_size', 32, 'Sentences decoded together.')
  flags.DEFINE_integer('extra_length', 50, 'Generate at most source length + this many tokens.')
  flags.DEFINE_enum(
    'checkpoint', 'latest', ['latest', 'best', 'average'], 'Which checkpoint to load.'
  )


class InputError(ValueError):
  """The text to translate cannot be read."""


def split_lines(data: bytes, name: str) -> list[str]:
  """UTF-8 `data` -> its lines, split at `\\n` only (a `\\r` before it is dropped); a final
  newline does not start another line. Invalid UTF-8 raises InputError naming the line."""
  raw_lines = data.split(b'\n')
  if raw_lines and raw_lines[-1] == b'':
    raw_lines.pop()
  lines = []
  for number, raw in enumerate(raw_lines, start=1):
    if raw.endswith(b'\r'):
      raw = raw[:-1]
    try:
      lines.append(raw.decode('utf-8'))
    except UnicodeDecodeError as e:
      raise InputError(f'{name}:{number}: invalid UTF-8 at byte {e.start}') from None
  return lines


def read_input(path: str | None) -> list[str]:
  """The lines of `path`, or of stdin when `path` is None."""
  if path is None:
    if sys.stdin is None or sys.stdin.closed:
      raise InputError('stdin is closed; give --input=FILE or pipe the text in')
    return split_lines(sys.stdin.buffer.read(), '<stdin>')
  try:
    with open(path, 'rb') as f:
      return split_lines(f.read(), path)
  except OSError as e:
    raise InputError(f'{path}: {e.strerror}') from None


def _encode_sources(
  tokenizer, sentences: Sequence[str], eos_id: int, max_source: int, warn: Callable[[str], None]
) -> list[list[int] | None]:
  """Ids (+EOS) of each sentence, None for an empty one; over-long ones truncated (with a warning)."""
  encoded: list[list[int] | None] = []
  for number, sentence in enumerate(sentences, start=1):
    if not sentence.strip():
      encoded.append(None)
      continue
    ids = list(tokenizer.encode(sentence))
    if len(ids) > max_source:
      warn(f"line {number}: {len(ids)} tokens, longer than the model's {max_source}; truncated")
      ids = ids[:max_source]
    encoded.append(ids + [eos_id])
  return encoded


def translate(
  model: Any,
  tokenizer,
  sentences: Sequence[str],
  *,
  beam_size: int = 4,
  alpha: float = 0.6,
  batch_size: int = 32,
  extra_length: int = 50,
  max_new_tokens: int | None = None,
  length_normalization: str = 'gnmt',
  forced_eos: bool = False,
  warn: Callable[[str], None] | None = None,
) -> list[str]:
  """Translates `sentences` in order (one output per input; an empty input gives '').

  A sentence's translation does not depend on the others: each may generate at most its own
  source length + `extra_length` tokens (or `max_new_tokens`, if given). Sentences are sorted by
  length and decoded `batch_size` at a time, with source lengths padded to a multiple of 16, so
  only a few shapes compile. A source longer than the model's `max_positions` (EOS included) is
  truncated to fit, and `warn` (default: stderr) is told which line.
  """
  from transformer import search  # jax: loaded once there is something to translate

  config = model.config
  warn = warn or (lambda message: print(message, file=sys.stderr))
  encoded = _encode_sources(tokenizer, sentences, config.eos_id, config.max_positions - 1, warn)
  outputs = [''] * len(sentences)
  order = sorted(
    (i for i, ids in enumerate(encoded) if ids is not None), key=lambda i: len(encoded[i])
  )
  for start in range(0, len(order), batch_size):
    chunk = order[start : start + batch_size]
    length = search.bucket(max(len(encoded[i]) for i in chunk), config.max_positions)
    src = np.full((batch_size, length), config.pad_id, np.int32)  # fixed rows: one compilation
    for row, i in enumerate(chunk):
      src[row, : len(encoded[i])] = encoded[i]
    tokens = np.asarray(
      search.generate(
        model,
        src,
        beam_size=beam_size,
        alpha=alpha,
        extra_length=extra_length,
        max_new_tokens=max_new_tokens,
        length_normalization=length_normalization,
        forced_eos=forced_eos,
      )
    )
    for row, i in enumerate(chunk):
      outputs[i] = tokenizer.decode(tokens[row])
  return outputs


def _check_flags() -> None:
  if bool(FLAGS.workdir) == bool(FLAGS.pretrained):
    raise app.UsageError('give one of --workdir (a training run) or --pretrained (a Marian model)')
  if FLAGS.max_new_tokens is not None and FLAGS.max_new_tokens < 1:
    raise app.UsageError(f'--max_new_tokens must be >= 1, got {FLAGS.max_new_tokens}')
  if FLAGS.beam_size is not None and FLAGS.beam_size < 1:
    raise app.UsageError(f'--beam_size must be >= 1, got {FLAGS.beam_size}')
  if FLAGS.batch_size < 1:
    raise app.UsageError(f'--batch_size must be >= 1, got {FLAGS.batch_size}')
  if FLAGS.extra_length < 0:
    raise app.UsageError(f'--extra_length must be >= 0, got {FLAGS.extra_length}')


def _load():
  """(model, tokenizer, a description) from --workdir or --pretrained."""
  from transformer import workdir

  return workdir.load_model_or_pretrained(FLAGS.workdir, FLAGS.pretrained, which=FLAGS.checkpoint)


def _decoding_settings() -> dict:
  """beam_size and forced_eos: the flags where given, else what a pretrained directory's
  generation config says (`marian.generation_defaults`), else this package's; and
  max_new_tokens (the flag)."""
  defaults = {'beam_size': None, 'forced_eos': False, 'max_new_tokens': None}
  if FLAGS.pretrained:
    from transformer import marian

    defaults.update(marian.generation_defaults(FLAGS.pretrained))
  given = {
    'beam_size': FLAGS.beam_size,
    'forced_eos': FLAGS.forced_eos,
    'max_new_tokens': FLAGS.max_new_tokens,
  }
  settings = {k: defaults[k] if v is None else v for k, v in given.items()}
  settings['beam_size'] = settings['beam_size'] or 4
  return settings


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _check_flags()
  logging.set_verbosity(logging.WARNING)  # Orbax reports every read at INFO
  try:
    lines = read_input(FLAGS.input)
  except InputError as e:
    print(f'translate: error: {e}', file=sys.stderr)
    return 2
  try:
    model, tokenizer, what = _load()
    settings = _decoding_settings()
  except (OSError, ValueError, RuntimeError) as e:
    print(f'translate: error: {e}', file=sys.stderr)
    return 2
  print(f'translate: {what}', file=sys.stderr)
  if FLAGS.max_new_tokens is not None and FLAGS.max_new_tokens > model.config.max_positions:
    print(
      f'translate: error: --max_new_tokens={FLAGS.max_new_tokens} is more than the model '
      f'can generate ({model.config.max_positions} positions)',
      file=sys.stderr,
    )
    return 2
  outputs = translate(
    model,
    tokenizer,
    lines,
    alpha=FLAGS.length_penalty,
    batch_size=FLAGS.batch_size,
    extra_length=FLAGS.extra_length,
    length_normalization=FLAGS.length_normalization,
    **settings,
  )
  # A translation never spans lines: the output keeps one line per input line.
  text = ''.join(line.replace('\r', ' ').replace('\n', ' ') + '\n' for line in outputs)
  try:
    sys.stdout.write(text)
    sys.stdout.flush()
  except BrokenPipeError:  # the reader went away (`| head`): no traceback, as other tools do
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE
  return 0


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
