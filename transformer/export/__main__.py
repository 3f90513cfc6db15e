"""python -m transformer.export: a trained workdir or a Marian directory in a deployable format.

    python -m transformer.export --workdir=DIR --format=ctranslate2 --out=OUT \\
        [--checkpoint=latest|best|average] [--quantization=int8|int8_float32|int16|float16|bfloat16]
    python -m transformer.export --workdir=DIR --format=stablehlo --out=OUT [--beam_sizes=1,4]
    python -m transformer.export --pretrained=opus-mt-en-de --format=ctranslate2 --out=OUT
    python -m transformer.export --workdir=DIR --format=marian --out=OUT   # post-LN models only
    python -m transformer.export --workdir=DIR --format=m2m100 --out=OUT   # NLLB/M2M100 fine-tuned here

Everything that can be checked is checked before the model loads (flags, paths, the libraries a
format needs), and what the format cannot express is refused in one line before anything is
written. The export is written to a temporary folder beside OUT and renamed into place, so a
failed export leaves no half-written OUT; an existing OUT is replaced only with --force.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys

from absl import app, flags, logging

from transformer.decoding.options import LENGTH_NORMALIZATIONS, DecodingOptions

DEFAULTS = DecodingOptions()

FLAGS = flags.FLAGS
FORMATS = ('ctranslate2', 'stablehlo', 'marian', 'm2m100')
QUANTIZATIONS = (
  'int8',
  'int8_float32',
  'int8_float16',
  'int8_bfloat16',
  'int16',
  'float16',
  'bfloat16',
  'float32',
)


class FlagError(ValueError):
  """A flag or path that is wrong before anything loads (reported in one line)."""


def _define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Training workdir to export.')
  flags.DEFINE_string(
    'pretrained', None, 'A Hugging Face Marian (opus-mt) or M2M100 (NLLB) directory to export.'
  )
  flags.DEFINE_string('source_lang', None, 'A many-to-many --pretrained model: the source code.')
  flags.DEFINE_string('target_lang', None, 'A many-to-many --pretrained model: the target code.')
  flags.DEFINE_enum('format', 'ctranslate2', FORMATS, 'What to write.')
  flags.DEFINE_string('out', None, 'The directory to write (must not exist, unless --force).')
  flags.DEFINE_bool('force', False, 'Replace --out if it exists.')
  flags.DEFINE_enum('checkpoint', 'latest', ['latest', 'best', 'average'], 'Which checkpoint.')
  flags.DEFINE_enum(
    'quantization', None, QUANTIZATIONS, 'CTranslate2 weight type (default: float32).'
  )
  flags.DEFINE_list('beam_sizes', ['1', '4'], 'stablehlo: one artifact set per beam size.')
  flags.DEFINE_list(
    'source_lengths', [], 'stablehlo: source-length buckets (default: every multiple of 16).'
  )
  flags.DEFINE_integer(
    'extra_length', DEFAULTS.extra_length, 'stablehlo: tokens generated beyond the source length.'
  )
  flags.DEFINE_float(
    'length_penalty',
    DEFAULTS.length_penalty,
    'Beam length-penalty exponent written with the model.',
  )
  flags.DEFINE_enum(
    'length_normalization',
    DEFAULTS.length_normalization,
    list(LENGTH_NORMALIZATIONS),
    'stablehlo: beam ranking.',
  )


def _positive_ints(values: list[str], name: str) -> list[int]:
  try:
    numbers = [int(v) for v in values]
  except ValueError:
    raise FlagError(f'--{name} must be integers, got {",".join(values)}') from None
  if any(n < 1 for n in numbers):
    raise FlagError(f'--{name} must be positive, got {",".join(values)}')
  return numbers


def _check_flags() -> str:
  """The directory exported from; FlagError for anything wrong before a model loads."""
  if bool(FLAGS.workdir) == bool(FLAGS.pretrained):
    raise FlagError('give one of --workdir (a training run) or --pretrained (a Marian model)')
  if not FLAGS.out:
    raise FlagError('--out is required (the directory to write)')
  source = os.path.abspath(FLAGS.workdir or FLAGS.pretrained)
  if not os.path.isdir(source):
    raise FlagError(f'{FLAGS.workdir or FLAGS.pretrained}: no such directory')
  out = os.path.abspath(FLAGS.out)
  if out == source or source.startswith(out + os.sep) or out.startswith(source + os.sep):
    raise FlagError(f'--out={FLAGS.out} would write into the model it exports; choose another')
  if os.path.exists(out) and not FLAGS.force:
    raise FlagError(f'--out={FLAGS.out} exists; give --force to replace it')
  if FLAGS.quantization and FLAGS.format != 'ctranslate2':
    raise FlagError('--quantization applies to --format=ctranslate2 only')
  _positive_ints(FLAGS.beam_sizes, 'beam_sizes')
  _positive_ints(FLAGS.source_lengths, 'source_lengths')
  needs = {'ctranslate2': 'ctranslate2', 'stablehlo': 'flatbuffers'}.get(FLAGS.format)
  if needs:
    try:
      importlib.import_module(needs)
    except ImportError:
      raise FlagError(
        f"--format={FLAGS.format} needs {needs}: pip install 'transformer[export]'"
      ) from None
  return source


def _load():
  """(model, tokenizer, a description) from --workdir or --pretrained."""
  from transformer.training import workdir

  return workdir.load_model_or_pretrained(
    FLAGS.workdir,
    FLAGS.pretrained,
    which=FLAGS.checkpoint,
    source_lang=FLAGS.source_lang,
    target_lang=FLAGS.target_lang,
  )


def tokenizer_files(tokenizer, *, with_vocab: bool) -> dict[str, str]:
  """{name in the export: path}: the SentencePiece model(s), source side first, and for a Marian
  tokenizer (`with_vocab`) the vocab.json files that map its pieces to ids."""
  if hasattr(tokenizer, 'processor'):
    return {'sentencepiece.model': tokenizer.path}
  names = ['source.spm', 'target.spm']
  if with_vocab:
    names += [
      n
      for n in ('vocab.json', 'target_vocab.json')
      if os.path.exists(os.path.join(tokenizer.path, n))
    ]
  return {name: os.path.join(tokenizer.path, name) for name in names}


def _refusal(model, tokenizer) -> str | None:
  """Why the chosen format cannot express `model` (with its tokenizer), or None."""
  from transformer.pretrained import m2m100

  many_to_many = isinstance(tokenizer, m2m100.M2M100Tokenizer)
  if FLAGS.format == 'm2m100':
    problem = m2m100.unexpressible(model.config)
    if not many_to_many:
      problem = problem or 'its tokenizer is not an NLLB/M2M100 one'
    return problem and f'M2M100 cannot express this model: {problem}'
  if many_to_many:
    return (
      f'--format={FLAGS.format} takes no NLLB/M2M100 model here: export it with --format=m2m100 '
      "(CTranslate2's own ct2-transformers-converter converts that directory)"
    )
  if FLAGS.format == 'marian':
    from transformer.pretrained import marian

    problem = marian.unexpressible(model.config)
    return problem and f'Marian cannot express this model: {problem}'
  if FLAGS.format == 'ctranslate2':
    from transformer.export import ctranslate2_model

    problem = ctranslate2_model.unexpressible(model.config)
    return problem and f'CTranslate2 cannot express this model: {problem}'
  return None


def _write(model, tokenizer, description: str, directory: str) -> None:
  if FLAGS.format == 'ctranslate2':
    from transformer.export import ctranslate2_model

    ctranslate2_model.save(
      model,
      tokenizer,
      tokenizer_files(tokenizer, with_vocab=False),
      directory,
      quantization=FLAGS.quantization,
      description=description,
      length_penalty=FLAGS.length_penalty,
    )
  elif FLAGS.format == 'stablehlo':
    from transformer.export import stablehlo

    stablehlo.save(
      model,
      tokenizer_files(tokenizer, with_vocab=True),
      directory,
      beam_sizes=_positive_ints(FLAGS.beam_sizes, 'beam_sizes'),
      source_lengths=_positive_ints(FLAGS.source_lengths, 'source_lengths') or None,
      extra_length=FLAGS.extra_length,
      length_penalty=FLAGS.length_penalty,
      length_normalization=FLAGS.length_normalization,
    )
  else:
    from transformer.pretrained import families as pretrained

    pretrained.save(model, tokenizer, directory)


def main(argv: list[str]) -> int:
  logging.set_verbosity(logging.WARNING)
  try:
    if len(argv) > 1:
      raise FlagError(f'unexpected arguments: {argv[1:]}')
    _check_flags()
    model, tokenizer, description = _load()
  except (OSError, ValueError, RuntimeError) as e:
    print(f'export: error: {e}', file=sys.stderr)
    return 2
  problem = _refusal(model, tokenizer)
  if problem:
    print(f'export: error: {problem}', file=sys.stderr)
    return 2
  out = os.path.abspath(FLAGS.out)
  temporary = f'{out}.partial{os.getpid()}'
  try:
    _write(model, tokenizer, description, temporary)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  if os.path.exists(out):
    shutil.rmtree(out)
  os.replace(temporary, out)
  print(f'export: {description} -> {FLAGS.out} ({FLAGS.format})', file=sys.stderr)
  return 0


def run() -> None:
  _define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
