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

import dataclasses
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
  flags.DEFINE_integer(
    'n_best', 1, 'Print this many hypotheses per sentence: "i ||| text ||| score ||| log_prob".'
  )
  flags.DEFINE_bool('scores', False, 'Print the best translation as "text ||| score ||| log_prob".')
  flags.DEFINE_float(
    'sampling_temperature', None, 'Sample each token from softmax(logits / T) instead of searching.'
  )
  flags.DEFINE_integer('sampling_topk', 0, 'Sample among the k most likely tokens (0: all).')
  flags.DEFINE_float('sampling_topp', 1.0, 'Sample within the top-p nucleus (1.0: all).')
  flags.DEFINE_integer('seed', 0, 'Seed of the samples (the same seed gives the same samples).')
  flags.DEFINE_integer(
    'num_samples', 1, 'Samples per sentence, printed as "i ||| text ||| score ||| log_prob".'
  )
  flags.DEFINE_integer('batch_size', 32, 'Sentences decoded together.')
  flags.DEFINE_integer(
    'max_batch_tokens',
    None,
    'Form batches by padded source tokens instead of --batch_size sentences '
    "(CTranslate2's batch_type='tokens', fairseq's --max-tokens).",
  )
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


def batches(
  lengths: dict[int, int], rows_for: Callable[[int], int], limit: int
) -> list[tuple[list[int], int]]:
  """Sentences (index -> tokens) grouped shortest first: [(indices, padded length)], the length
  rounded up to a multiple of 16 (at most `limit`), each group at most `rows_for(that length)`
  sentences long."""
  from transformer import search

  groups: list[list[int]] = []
  for i in sorted(lengths, key=lambda i: lengths[i]):
    if not groups or len(groups[-1]) + 1 > rows_for(search.bucket(lengths[i], limit)):
      groups.append([])
    groups[-1].append(i)
  return [(group, search.bucket(max(lengths[i] for i in group), limit)) for group in groups]


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """One translation: its text, its length-normalised score (what beam search ranks by: log P
  / lp(length)) and its log-probability log P (EOS included)."""

  text: str
  score: float
  log_prob: float


def translate(model: Any, tokenizer, sentences: Sequence[str], **options) -> list[str]:
  """Translates `sentences` in order (one output per input; an empty input gives ''): the best
  hypothesis of `translate_n_best` (same options) without its scores."""
  hypotheses = translate_n_best(model, tokenizer, sentences, scores=False, **options)
  return [best[0].text for best in hypotheses]


def translate_n_best(
  model: Any,
  tokenizer,
  sentences: Sequence[str],
  *,
  n_best: int = 1,
  scores: bool = True,
  num_samples: int = 1,
  batch_size: int = 32,
  max_batch_tokens: int | None = None,
  warn: Callable[[str], None] | None = None,
  **options,
) -> list[list[Hypothesis]]:
  """The `n_best` best translations of each sentence, best first (an empty input gives empty
  hypotheses scored 0); `options` are `search.generate`'s (beam_size, alpha, extra_length,
  max_new_tokens, length_normalization, forced_eos, sampling). `scores=False` leaves the
  scores 0 (greedy search then skips the pass that computes them). With `sampling`, each
  sentence's `num_samples` samples instead: sample j of sentence i has seed number
  i * num_samples + j, whatever its batch.

  A sentence's translation does not depend on the others. Sentences are sorted by length and
  decoded `batch_size` at a time, or as many as fit in `max_batch_tokens` padded source tokens
  (CTranslate2's `batch_type='tokens'`, fairseq's `--max-tokens`), with lengths padded to a
  multiple of 16 and fixed rows per length, so only a few shapes compile. A source longer than
  the model's `max_positions` (EOS included) is truncated, and `warn` (default: stderr) is told.
  """
  config = model.config
  warn = warn or (lambda message: print(message, file=sys.stderr))
  encoded = _encode_sources(tokenizer, sentences, config.eos_id, config.max_positions - 1, warn)
  sampling = options.get('sampling')
  copies = 1 if sampling is None else num_samples  # rows per sentence: its samples
  outputs = [[Hypothesis('', 0.0, 0.0)] * (n_best * copies) for _ in sentences]
  rows_for = lambda length: max(1, max_batch_tokens // length) if max_batch_tokens else batch_size
  lengths = {
    i * copies + j: len(ids)
    for i, ids in enumerate(encoded)
    if ids is not None
    for j in range(copies)
  }
  for chunk, length in batches(lengths, rows_for, config.max_positions):
    src = np.full((rows_for(length), length), config.pad_id, np.int32)  # rows fixed per length
    seeds = np.zeros(len(src), np.int32)  # a row's seed number: its sentence and sample
    for row, unit in enumerate(chunk):
      src[row, : len(encoded[unit // copies])] = encoded[unit // copies]
      seeds[row] = unit
    decoded = _decode(model, src, n_best, scores, {**options, 'row_seeds': seeds})
    for row, unit in enumerate(chunk):
      found = _hypotheses(tokenizer, decoded, row)
      if sampling is None:
        outputs[unit] = found
      else:
        outputs[unit // copies][unit % copies] = found[0]
  return outputs


def _decode(model, src: np.ndarray, n_best: int, scores: bool, options: dict):
  """(tokens [rows, n_best, length], scores, log-probabilities [rows, n_best]) of a batch."""
  from transformer import search

  if scores or n_best > 1:
    return tuple(map(np.asarray, search.generate_n_best(model, src, n_best=n_best, **options)))
  tokens = np.asarray(search.generate(model, src, **options))[:, None]
  return tokens, np.zeros(tokens.shape[:2]), np.zeros(tokens.shape[:2])


def _hypotheses(tokenizer, decoded: tuple[np.ndarray, ...], row: int) -> list[Hypothesis]:
  tokens, score, log_prob = decoded
  return [
    Hypothesis(tokenizer.decode(tokens[row, n]), float(score[row, n]), float(log_prob[row, n]))
    for n in range(tokens.shape[1])
  ]


def format_lines(hypotheses: list[list[Hypothesis]], *, n_best: int, scores: bool) -> str:
  """The command's output: a line per input line (`text`, or `text ||| score ||| log_prob` with
  scores), or with `n_best` > 1 that many lines per input, `i ||| text ||| score ||| log_prob`
  (`i` counts input lines from 0, as Marian's n-best lists). A translation never spans lines."""
  one_line = lambda text: text.replace('\r', ' ').replace('\n', ' ')
  lines = []
  for number, best in enumerate(hypotheses):
    for h in best[:n_best]:
      fields = [one_line(h.text)]
      if scores or n_best > 1:
        fields += [f'{h.score:.6f}', f'{h.log_prob:.6f}']
      if n_best > 1:
        fields.insert(0, str(number))
      lines.append(' ||| '.join(fields) + '\n')
  return ''.join(lines)


def _check_flags() -> None:
  if bool(FLAGS.workdir) == bool(FLAGS.pretrained):
    raise app.UsageError('give one of --workdir (a training run) or --pretrained (a Marian model)')
  if FLAGS.max_new_tokens is not None and FLAGS.max_new_tokens < 1:
    raise app.UsageError(f'--max_new_tokens must be >= 1, got {FLAGS.max_new_tokens}')
  if FLAGS.beam_size is not None and FLAGS.beam_size < 1:
    raise app.UsageError(f'--beam_size must be >= 1, got {FLAGS.beam_size}')
  if FLAGS.max_batch_tokens is not None and FLAGS.max_batch_tokens < 1:
    raise app.UsageError(f'--max_batch_tokens must be >= 1, got {FLAGS.max_batch_tokens}')
  if FLAGS.n_best < 1 or FLAGS.num_samples < 1:
    raise app.UsageError('--n_best and --num_samples must be >= 1')
  if FLAGS.sampling_temperature is not None and FLAGS.sampling_temperature <= 0:
    raise app.UsageError(f'--sampling_temperature must be > 0, got {FLAGS.sampling_temperature}')
  if FLAGS.sampling_topk < 0 or not 0 < FLAGS.sampling_topp <= 1:
    raise app.UsageError('--sampling_topk must be >= 0 and --sampling_topp in (0, 1]')
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
  sampled = FLAGS.sampling_temperature is not None or FLAGS.sampling_topk or FLAGS.sampling_topp < 1
  settings['beam_size'] = settings['beam_size'] or (1 if sampled else 4)
  if sampled:
    from transformer.sampling import Sampling

    settings['sampling'] = Sampling(
      temperature=FLAGS.sampling_temperature or 1.0,
      top_k=FLAGS.sampling_topk,
      top_p=FLAGS.sampling_topp,
      seed=FLAGS.seed,
    )
  return settings


def _unfit(model, settings: dict) -> str | None:
  """What in the flags the loaded model cannot do, or None."""
  if FLAGS.max_new_tokens is not None and FLAGS.max_new_tokens > model.config.max_positions:
    return (
      f'--max_new_tokens={FLAGS.max_new_tokens} is more than the model can generate '
      f'({model.config.max_positions} positions)'
    )
  if FLAGS.n_best > settings['beam_size']:
    return f'--n_best={FLAGS.n_best} is more than the beam size {settings["beam_size"]}'
  if 'sampling' in settings and settings['beam_size'] != 1:
    return f'sampling draws one token at a time: give --beam_size=1, not {settings["beam_size"]}'
  if FLAGS.num_samples > 1 and 'sampling' not in settings:
    return (
      '--num_samples needs sampling (--sampling_temperature, --sampling_topk or --sampling_topp)'
    )
  return None


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
  problem = _unfit(model, settings)
  if problem:
    print(f'translate: error: {problem}', file=sys.stderr)
    return 2
  hypotheses = translate_n_best(
    model,
    tokenizer,
    lines,
    n_best=FLAGS.n_best,
    scores=FLAGS.scores or max(FLAGS.n_best, FLAGS.num_samples) > 1,
    num_samples=FLAGS.num_samples,
    alpha=FLAGS.length_penalty,
    batch_size=FLAGS.batch_size,
    max_batch_tokens=FLAGS.max_batch_tokens,
    extra_length=FLAGS.extra_length,
    length_normalization=FLAGS.length_normalization,
    **settings,
  )
  listed = max(FLAGS.n_best, FLAGS.num_samples)
  text = format_lines(hypotheses, n_best=listed, scores=FLAGS.scores)
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
