"""The translate command, over `transformer.decoding.translation`:

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

import os
import sys
from typing import Any

from absl import app, flags, logging

from transformer.decoding import translation
from transformer.decoding.options import LENGTH_NORMALIZATIONS, DecodingOptions, OptionError

DEFAULTS = DecodingOptions()

FLAGS = flags.FLAGS
# The flag of each decoding option whose name differs (`Sampling`'s fields); the others share it.
FLAG_OF = {
  'temperature': 'sampling_temperature',
  'top_k': 'sampling_topk',
  'top_p': 'sampling_topp',
}


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
    f"--pretrained model's num_beams, else {DEFAULTS.beam_size}.",
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
    "Length-penalty exponent α (default: the one a workdir's run chose on validation, "
    f'else {DEFAULTS.length_penalty}).',
  )
  flags.DEFINE_enum(
    'length_normalization',
    DEFAULTS.length_normalization,
    list(LENGTH_NORMALIZATIONS),
    "Beam scores: log P / ((5 + len) / 6)^α ('gnmt'), or log P / len^α as "
    "transformers' generate ('hf') and CTranslate2 ('ctranslate2': also stops as it does).",
  )
  flags.DEFINE_integer(
    'max_new_tokens',
    None,
    'Generate at most this many tokens per sentence (instead of source length + --extra_length).',
  )
  flags.DEFINE_integer(
    'extra_length', DEFAULTS.extra_length, 'Generate at most source length + this many tokens.'
  )
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


def format_lines(
  hypotheses: list[list[translation.Hypothesis]], *, n_best: int, scores: bool
) -> str:
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
  if FLAGS.max_batch_tokens is not None and FLAGS.max_batch_tokens < 1:
    raise app.UsageError(f'--max_batch_tokens must be >= 1, got {FLAGS.max_batch_tokens}')
  if FLAGS.num_samples < 1 or FLAGS.batch_size < 1:
    raise app.UsageError('--num_samples and --batch_size must be >= 1')


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
  from transformer.decoding import ensemble
  from transformer.training import workdir

  languages = dict(source_lang=FLAGS.source_lang, target_lang=FLAGS.target_lang)
  loaded = [workdir.load_model_or_pretrained(w, p, which=c, **languages) for w, p, c in _members()]
  if len(loaded) == 1:
    return loaded[0]
  models, tokenizers, described = zip(*loaded)
  model = ensemble.Ensemble(models)
  ensemble.check_vocabularies(tokenizers, model.config)
  return model, tokenizers[0], f'an ensemble of {len(models)}: ' + '; '.join(described)


def _decoding_options():
  """The `DecodingOptions`: the flags where given, else what the model's directory says (a
  pretrained model's generation config, `marian.generation_defaults`; the beam size and length
  penalty a single workdir's run chose on validation, `workdir.decoding_defaults`), else
  `DecodingOptions`' own defaults. A value it refuses raises ValueError naming it."""
  chosen: dict[str, Any] = {}
  if FLAGS.pretrained:
    from transformer.pretrained import families

    chosen = families.generation_defaults(FLAGS.pretrained[0])
  elif len(_members()) == 1:
    from transformer.training import workdir

    chosen = workdir.decoding_defaults(FLAGS.workdir[0])
    if chosen and FLAGS.beam_size is None and FLAGS.length_penalty is None:
      print(
        f'translate: beam {chosen.get("beam_size")}, length penalty '
        f'{chosen.get("length_penalty")}: chosen on validation by the run (--beam_size, '
        '--length_penalty override)',
        file=sys.stderr,
      )
  sampling = _sampling()
  given = {
    'beam_size': 1 if sampling and FLAGS.beam_size is None else FLAGS.beam_size,
    'length_penalty': FLAGS.length_penalty,
    'forced_eos': FLAGS.forced_eos,
    'max_new_tokens': FLAGS.max_new_tokens,
  }
  fields = {k: chosen.get(k) if given[k] is None else given[k] for k in given}  # flags first
  fields = {k: v for k, v in fields.items() if v is not None}  # else DecodingOptions' default
  return DecodingOptions(
    extra_length=FLAGS.extra_length,
    length_normalization=FLAGS.length_normalization,
    sampling=sampling,
    **fields,
  )


def _sampling():
  """The `Sampling` the flags ask for, or None."""
  sampled = FLAGS.sampling_temperature is not None or FLAGS.sampling_topk or FLAGS.sampling_topp < 1
  if not sampled:
    return None
  from transformer.decoding.options import Sampling

  return Sampling(
    temperature=1.0 if FLAGS.sampling_temperature is None else FLAGS.sampling_temperature,
    top_k=FLAGS.sampling_topk,
    top_p=FLAGS.sampling_topp,
    seed=FLAGS.seed,
  )


def _unfit(model, options) -> str | None:
  """What in the flags the loaded model cannot do, or None."""
  if options.max_new_tokens is not None and options.max_new_tokens > model.config.max_positions:
    return (
      f'--max_new_tokens={options.max_new_tokens} is more than the model can generate '
      f'({model.config.max_positions} positions)'
    )
  if FLAGS.num_samples > 1 and options.sampling is None:
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
    options = _decoding_options()
    options.check_n_best(FLAGS.n_best)
  except OptionError as e:
    print(f'translate: error: --{FLAG_OF.get(e.field, e.field)} {e.problem}', file=sys.stderr)
    return 2
  except (OSError, ValueError) as e:
    print(f'translate: error: {e}', file=sys.stderr)
    return 2
  try:
    model, tokenizer, what = _load()
  except (OSError, ValueError, RuntimeError) as e:
    print(f'translate: error: {e}', file=sys.stderr)
    return 2
  print(f'translate: {what}', file=sys.stderr)
  problem = _unfit(model, options)
  if problem:
    print(f'translate: error: {problem}', file=sys.stderr)
    return 2
  hypotheses = translation.translate_n_best(
    model,
    tokenizer,
    lines,
    options,
    n_best=FLAGS.n_best,
    scores=FLAGS.scores or max(FLAGS.n_best, FLAGS.num_samples) > 1,
    num_samples=FLAGS.num_samples,
    batch_size=FLAGS.batch_size,
    max_batch_tokens=FLAGS.max_batch_tokens,
    prefixes=prefixes,
    alignment=FLAGS.alignment,
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
