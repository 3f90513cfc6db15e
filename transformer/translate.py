"""Translating text: `translate(model, tokenizer, sentences)`, and the command line over it.

    python -m transformer.translate --workdir=DIR [--beam_size=4] [--input=FILE] [--checkpoint=best]
    python -m transformer.translate --pretrained=DIR [--max_new_tokens=N] [--length_normalization=hf]
    python -m transformer.translate --workdir=A --workdir=B     # an ensemble of two runs
    ... [--n_best=K | --scores] [--prefix_file=FILE] [--alignment=words|pieces] [--sampling_*]

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
  _define_input_flags()
  _define_decoding_flags()
  _define_output_flags()


def _define_input_flags() -> None:
  """What to load and what to translate."""
  flags.DEFINE_multi_string(
    'workdir',
    None,
    'Training workdir (config.json, tokenizer.model, checkpoints/); several: an ensemble.',
  )
  flags.DEFINE_multi_string(
    'pretrained',
    None,
    'A Hugging Face Marian (opus-mt) or M2M100 (NLLB) directory, instead of --workdir; several: '
    'an ensemble.',
  )
  flags.DEFINE_multi_enum(
    'checkpoint',
    ['latest'],
    ['latest', 'best', 'average'],
    'Which checkpoint to load; several of one --workdir: an ensemble of them.',
  )
  flags.DEFINE_string('input', None, 'File to translate, one sentence per line (default: stdin).')
  flags.DEFINE_string(
    'source_lang',
    None,
    'A many-to-many --pretrained model (NLLB, M2M100): the source language code.',
  )
  flags.DEFINE_string(
    'target_lang', None, 'A many-to-many --pretrained model: the target language code (eng_Latn).'
  )
  flags.DEFINE_string(
    'prefix_file',
    None,
    'Target prefixes, one per input line (possibly empty): each translation starts with it.',
  )


def _define_decoding_flags() -> None:
  """How to decode: search, lengths, sampling."""
  flags.DEFINE_integer(
    'beam_size',
    None,
    "Beam size (1 = greedy); default: the one a workdir's run chose on validation, a "
    "--pretrained model's num_beams, else 4.",
  )
  flags.DEFINE_bool(
    'forced_eos',
    None,
    "End a sentence that reaches its limit with EOS (default: as a --pretrained model's "
    'generation config says; off for workdirs).',
  )
  flags.DEFINE_float(
    'length_penalty',
    None,
    "Length-penalty exponent alpha (default: the one a workdir's run chose on validation, "
    'else 0.6).',
  )
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
  flags.DEFINE_integer('extra_length', 50, 'Generate at most source length + this many tokens.')
  flags.DEFINE_float(
    'sampling_temperature', None, 'Sample each token from softmax(logits / T) instead of searching.'
  )
  flags.DEFINE_integer('sampling_topk', 0, 'Sample among the k most likely tokens (0: all).')
  flags.DEFINE_float('sampling_topp', 1.0, 'Sample within the top-p nucleus (1.0: all).')
  flags.DEFINE_integer('seed', 0, 'Seed of the samples (the same seed gives the same samples).')


def _define_output_flags() -> None:
  """What to print, and how to batch."""
  flags.DEFINE_integer(
    'n_best', 1, 'Print this many hypotheses per sentence: "i ||| text ||| score ||| log_prob".'
  )
  flags.DEFINE_bool('scores', False, 'Print the best translation as "text ||| score ||| log_prob".')
  flags.DEFINE_integer(
    'num_samples', 1, 'Samples per sentence, printed as "i ||| text ||| score ||| log_prob".'
  )
  flags.DEFINE_enum(
    'alignment',
    None,
    ['words', 'pieces'],
    'Print source-target alignments (Pharaoh "0-0 1-2") after the text, on words or pieces.',
  )
  flags.DEFINE_integer('batch_size', 32, 'Sentences decoded together.')
  flags.DEFINE_integer(
    'max_batch_tokens',
    None,
    'Form batches by padded source tokens instead of --batch_size sentences '
    "(CTranslate2's batch_type='tokens', fairseq's --max-tokens).",
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
  tokenizer, sentences: Sequence[str], config, warn: Callable[[str], None]
) -> list[list[int] | None]:
  """Ids of each sentence with the tokenizer's source end (EOS, or what its `end_ids` says),
  None for an empty one; over-long ones truncated (with a warning)."""
  from transformer.special_ids import end_ids

  end = end_ids(tokenizer, 'source', config.eos_id)
  max_positions = config.max_positions
  max_source = max_positions - len(end)
  encoded: list[list[int] | None] = []
  for number, sentence in enumerate(sentences, start=1):
    if not sentence.strip():
      encoded.append(None)
      continue
    ids = list(tokenizer.encode(sentence))
    if len(ids) > max_source:
      warn(f"line {number}: {len(ids)} tokens, longer than the model's {max_source}; truncated")
      ids = ids[:max_source]
    encoded.append(ids + end)
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
  / lp(length)), its log-probability log P (EOS included) and, when asked for, its Pharaoh
  alignment to the source (`transformer.alignment`)."""

  text: str
  score: float
  log_prob: float
  alignment: str | None = None


def translate(
  model: Any, tokenizer, sentences: Sequence[str], options=None, **keywords
) -> list[str]:
  """Translates `sentences` in order (one output per input; an empty input gives ''): the best
  hypothesis of `translate_n_best` (same arguments) without its scores."""
  hypotheses = translate_n_best(model, tokenizer, sentences, options, scores=False, **keywords)
  return [best[0].text for best in hypotheses]


def translate_n_best(
  model: Any,
  tokenizer,
  sentences: Sequence[str],
  options=None,
  *,
  n_best: int = 1,
  scores: bool = True,
  num_samples: int = 1,
  batch_size: int = 32,
  max_batch_tokens: int | None = None,
  prefixes: Sequence[str] | None = None,
  alignment: str | None = None,
  warn: Callable[[str], None] | None = None,
  **overrides,
) -> list[list[Hypothesis]]:
  """The `n_best` best translations of each sentence, best first (an empty input gives empty
  hypotheses scored 0).

  Args:
    model: a `Transformer` or an `transformer.ensemble.Ensemble`.
    options: `transformer.decoding_options.DecodingOptions`; `overrides` replace its fields
      (`beam_size=1`, `alpha=1.0`, `sampling=Sampling(...)`, ...).
    scores: False leaves the scores 0 (greedy search then skips the pass that computes them).
    num_samples: with sampling, each sentence's samples instead of n-best hypotheses: sample j
      of sentence i has seed number i * num_samples + j, whatever its batch.
    batch_size, max_batch_tokens: sentences are sorted by length and decoded `batch_size` at a
      time, or as many as fit in `max_batch_tokens` padded source tokens (CTranslate2's
      `batch_type='tokens'`); lengths padded to multiples of 16, few shapes compile.
    prefixes: one target text per sentence that its translations start with ('' for none).
    alignment: 'words' or 'pieces' fills each hypothesis's Pharaoh alignment.
    warn: told of truncated inputs (default: stderr). A source or prefix longer than the model's
      positions is truncated.

  A sentence's translation does not depend on the others.
  """
  from transformer.decoding_options import with_overrides

  options = with_overrides(options, overrides)
  config = model.config
  warn = warn or (lambda message: print(message, file=sys.stderr))
  encoded = _encode_sources(tokenizer, sentences, config, warn)
  targets = _encode_prefixes(tokenizer, prefixes, len(sentences), config.max_positions - 2, warn)
  copies = 1 if options.sampling is None else num_samples  # rows per sentence: its samples
  outputs = [[Hypothesis('', 0.0, 0.0)] * (n_best * copies) for _ in sentences]
  rows_for = lambda length: max(1, max_batch_tokens // length) if max_batch_tokens else batch_size
  lengths = {
    i * copies + j: len(ids) for i, ids in enumerate(encoded) if ids for j in range(copies)
  }
  for chunk, length in batches(lengths, rows_for, config.max_positions):
    src, seeds = _batch_sources(chunk, length, rows_for(length), encoded, copies, config.pad_id)
    prefix = _batch_prefixes(chunk, len(src), targets, copies, config)
    wanted = (n_best, scores, alignment)
    hypotheses = _decode_rows(model, tokenizer, src, (prefix, seeds), options, wanted, len(chunk))
    for unit, found in zip(chunk, hypotheses):
      if options.sampling is None:
        outputs[unit] = found
      else:
        outputs[unit // copies][unit % copies] = found[0]
  return outputs


def _encode_prefixes(
  tokenizer, prefixes: Sequence[str] | None, count: int, max_length: int, warn
) -> list[list[int]] | None:
  """Target ids of each prefix (none for ''), over-long ones truncated with a warning."""
  if prefixes is None:
    return None
  if len(prefixes) != count:
    raise ValueError(f'{len(prefixes)} target prefixes for {count} sentences')
  encoded = []
  for number, prefix in enumerate(prefixes, start=1):
    ids = list(tokenizer.encode(prefix, 'target')) if prefix.strip() else []
    first = getattr(tokenizer, 'forced_bos_id', None)  # a target language, which encode adds
    if first is not None and not ids:
      ids = [first]
    if len(ids) > max_length:
      warn(
        f'line {number}: a target prefix of {len(ids)} tokens, more than {max_length}; truncated'
      )
      ids = ids[:max_length]
    encoded.append(ids)
  return encoded


def _batch_sources(
  chunk: list[int],
  length: int,
  rows: int,
  encoded: list[list[int] | None],
  copies: int,
  pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
  """A batch's sources `[rows, length]` (rows fixed per length; those past the chunk are
  padding) and each row's seed number (its sentence and sample)."""
  src = np.full((rows, length), pad_id, np.int32)
  seeds = np.zeros(rows, np.int32)
  for row, unit in enumerate(chunk):
    src[row, : len(encoded[unit // copies])] = encoded[unit // copies]
    seeds[row] = unit
  return src, seeds


def _batch_prefixes(
  chunk: list[int], rows: int, targets: list[list[int]] | None, copies: int, config
) -> np.ndarray | None:
  """The batch's target prefixes `[rows, width]`, right-padded (width a multiple of 16 below
  the model's positions), or None without prefixes."""
  from transformer import search

  if targets is None:
    return None
  longest = max([len(targets[unit // copies]) for unit in chunk] + [1])
  width = search.bucket(longest, config.max_positions - 1)
  prefix = np.full((rows, width), config.pad_id, np.int32)
  for row, unit in enumerate(chunk):
    ids = targets[unit // copies]
    prefix[row, : len(ids)] = ids
  return prefix


def _forced_bos(tokenizer, rows: int, prefix: np.ndarray | None) -> np.ndarray | None:
  """`[rows]` the first token a many-to-many model's tokenizer forces (its target language;
  with prefixes, they hold it), or None."""
  first = getattr(tokenizer, 'forced_bos_id', None)
  return None if first is None or prefix is not None else np.full(rows, first, np.int32)


def _decode(model, src, forced: tuple, options, n_best: int, scores: bool):
  """(tokens [rows, n_best, length], scores, log-probabilities [rows, n_best]) of a batch, with
  the `forced` (prefix, forced_bos, row_seeds)."""
  from transformer import search

  prefix, forced_bos, seeds = forced
  given = dict(prefix=prefix, forced_bos=forced_bos, row_seeds=seeds)
  if scores or n_best > 1:
    found = search.generate_n_best(model, src, options, n_best=n_best, **given)
    return tuple(map(np.asarray, found))
  tokens = np.asarray(search.generate(model, src, options, **given))[:, None]
  return tokens, np.zeros(tokens.shape[:2]), np.zeros(tokens.shape[:2])


def _decode_rows(
  model, tokenizer, src: np.ndarray, given: tuple, options, wanted: tuple, rows: int
) -> list[list[Hypothesis]]:
  """The hypotheses of the batch's first `rows` rows (the others pad it to its fixed size);
  `given`: (prefix, row seeds), `wanted`: (n_best, scores, an alignment level or None)."""
  from transformer import alignment as alignment_lib

  (prefix, seeds), (n_best, scores, alignment) = given, wanted
  forced = (prefix, _forced_bos(tokenizer, len(src), prefix), seeds)
  tokens, score, log_prob = _decode(model, src, forced, options, n_best, scores)
  aligned = None
  if alignment:
    aligned = alignment_lib.alignments(model, tokenizer, src, tokens, alignment)
  return [
    [
      Hypothesis(
        tokenizer.decode(tokens[row, n]),
        float(score[row, n]),
        float(log_prob[row, n]),
        None if aligned is None else aligned[row][n],
      )
      for n in range(tokens.shape[1])
    ]
    for row in range(rows)
  ]


def format_lines(hypotheses: list[list[Hypothesis]], *, n_best: int, scores: bool) -> str:
  """The command's output: a line per input line, `text`, with ` ||| alignment` when the
  hypotheses carry one and ` ||| score ||| log_prob` with scores; with `n_best` > 1 that many
  lines per input, `i ||| text[ ||| alignment] ||| score ||| log_prob` (`i` counts input lines
  from 0, as Marian's n-best lists). A translation never spans lines."""
  one_line = lambda text: text.replace('\r', ' ').replace('\n', ' ')
  lines = []
  for number, best in enumerate(hypotheses):
    for h in best[:n_best]:
      fields = [one_line(h.text)]
      if h.alignment is not None:
        fields.append(h.alignment)
      if scores or n_best > 1:
        fields += [f'{h.score:.6f}', f'{h.log_prob:.6f}']
      if n_best > 1:
        fields.insert(0, str(number))
      lines.append(' ||| '.join(fields) + '\n')
  return ''.join(lines)


def _check_flags() -> None:
  if bool(FLAGS.workdir) == bool(FLAGS.pretrained):
    raise app.UsageError(
      'give --workdir (training runs) or --pretrained (Marian models), one kind, not both'
    )
  if len(FLAGS.checkpoint) > 1 and len(FLAGS.workdir or []) > 1:
    if len(FLAGS.checkpoint) != len(FLAGS.workdir):
      raise app.UsageError(
        f'{len(FLAGS.checkpoint)} --checkpoint for {len(FLAGS.workdir)} --workdir: give one, '
        'or one per workdir'
      )
  for name in ('max_new_tokens', 'beam_size', 'max_batch_tokens'):
    value = getattr(FLAGS, name)
    if value is not None and value < 1:
      raise app.UsageError(f'--{name} must be >= 1, got {value}')
  if FLAGS.n_best < 1 or FLAGS.num_samples < 1 or FLAGS.batch_size < 1:
    raise app.UsageError('--n_best, --num_samples and --batch_size must be >= 1')
  if FLAGS.sampling_temperature is not None and FLAGS.sampling_temperature <= 0:
    raise app.UsageError(f'--sampling_temperature must be > 0, got {FLAGS.sampling_temperature}')
  if FLAGS.sampling_topk < 0 or not 0 < FLAGS.sampling_topp <= 1:
    raise app.UsageError('--sampling_topk must be >= 0 and --sampling_topp in (0, 1]')
  if FLAGS.extra_length < 0:
    raise app.UsageError(f'--extra_length must be >= 0, got {FLAGS.extra_length}')


def _members() -> list[tuple[str | None, str | None, str]]:
  """(workdir, pretrained directory, checkpoint) of each model to load: several make an
  ensemble (several workdirs, several checkpoints of one, or several pretrained directories)."""
  if FLAGS.pretrained:
    return [(None, directory, 'latest') for directory in FLAGS.pretrained]
  workdirs, which = FLAGS.workdir, FLAGS.checkpoint
  if len(workdirs) == 1:
    return [(workdirs[0], None, checkpoint) for checkpoint in which]
  which = which * len(workdirs) if len(which) == 1 else which
  return [(w, None, checkpoint) for w, checkpoint in zip(workdirs, which)]


def _load():
  """(model or ensemble, tokenizer, a description) from --workdir or --pretrained."""
  from transformer import ensemble, workdir

  languages = dict(source_lang=FLAGS.source_lang, target_lang=FLAGS.target_lang)
  loaded = [workdir.load_model_or_pretrained(w, p, which=c, **languages) for w, p, c in _members()]
  if len(loaded) == 1:
    return loaded[0]
  models, tokenizers, described = zip(*loaded)
  model = ensemble.Ensemble(models)
  ensemble.check_vocabularies(tokenizers, model.config)
  return model, tokenizers[0], f'an ensemble of {len(models)}: ' + '; '.join(described)


def _decoding_settings() -> dict:
  """The decoding options: the flags where given, else what the model's directory says (a
  pretrained model's generation config, `marian.generation_defaults`; the beam size and length
  penalty a single workdir's run chose on validation, `workdir.decoding_defaults`), else this
  package's defaults."""
  defaults: dict[str, Any] = {'beam_size': None, 'forced_eos': False, 'alpha': 0.6}
  if FLAGS.pretrained:
    from transformer import pretrained

    defaults.update(pretrained.generation_defaults(FLAGS.pretrained[0]))
  elif len(_members()) == 1:
    from transformer import workdir

    chosen = workdir.decoding_defaults(FLAGS.workdir[0])
    if chosen and FLAGS.beam_size is None and FLAGS.length_penalty is None:
      print(
        f'translate: beam {chosen.get("beam_size")}, length penalty {chosen.get("alpha")}: '
        'chosen on validation by the run (--beam_size, --length_penalty override)',
        file=sys.stderr,
      )
    defaults.update(chosen)
  given = {'forced_eos': FLAGS.forced_eos, 'alpha': FLAGS.length_penalty}
  settings = {k: defaults[k] if given[k] is None else given[k] for k in given}
  sampled = FLAGS.sampling_temperature is not None or FLAGS.sampling_topk or FLAGS.sampling_topp < 1
  settings['beam_size'] = FLAGS.beam_size or (1 if sampled else defaults['beam_size'] or 4)
  settings['max_new_tokens'] = FLAGS.max_new_tokens
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


def _read_text() -> tuple[list[str], list[str] | None]:
  """The lines to translate and, with --prefix_file, their prefixes (as many)."""
  lines = read_input(FLAGS.input)
  if FLAGS.prefix_file is None:
    return lines, None
  prefixes = read_input(FLAGS.prefix_file)
  if len(prefixes) != len(lines):
    raise InputError(
      f'{FLAGS.prefix_file}: {len(prefixes)} prefixes for {len(lines)} input lines (give one '
      'per line, an empty line for none)'
    )
  return lines, prefixes


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _check_flags()
  logging.set_verbosity(logging.WARNING)  # Orbax reports every read at INFO
  try:
    lines, prefixes = _read_text()
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
    batch_size=FLAGS.batch_size,
    max_batch_tokens=FLAGS.max_batch_tokens,
    prefixes=prefixes,
    alignment=FLAGS.alignment,
    extra_length=FLAGS.extra_length,
    length_normalization=FLAGS.length_normalization,
    **settings,
  )
  listed = max(FLAGS.n_best, FLAGS.num_samples)
  return _write(format_lines(hypotheses, n_best=listed, scores=FLAGS.scores))


def _write(text: str) -> int:
  """Writes the output; a reader that went away (`| head`) ends the command quietly."""
  try:
    sys.stdout.write(text)
    sys.stdout.flush()
  except BrokenPipeError:  # no traceback, as other tools do
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE
  return 0


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
