"""Pretrained Hugging Face translation models, whichever family a directory holds: Marian
(opus-mt, `transformer.pretrained.marian`) or M2M100 (NLLB-200, M2M100, `transformer.pretrained.m2m100`).

    model, tokenizer = pretrained.load('opus-mt-en-de')
    model, tokenizer = pretrained.load('nllb-200-distilled-600M', source_lang='eng_Latn',
                                       target_lang='fra_Latn')

The family comes from `config.json`'s `model_type`. Many-to-many models need the language pair
(their codes: `eng_Latn`, `__en__`); a Marian model has one pair and takes none.
"""

from __future__ import annotations

import os
from typing import Any

from transformer.pretrained import hf_bart

FAMILIES = {'marian': 'marian', 'm2m_100': 'm2m100'}
FILES = (  # what a training workdir keeps of the directory it fine-tunes (see run_data)
  *hf_bart.TOKENIZER_FILES,
  'config.json',
  'generation_config.json',
)


def family(directory: str) -> str:
  """'marian' or 'm2m100', from the directory's config.json (HuggingFaceError otherwise)."""
  hf = hf_bart.read_config(directory)
  model_type = hf.get('model_type', 'marian')  # Marian directories of old transformers omit it
  if model_type not in FAMILIES:
    raise hf_bart.HuggingFaceError(
      f'{os.path.join(directory, "config.json")}: model_type {model_type!r} is not one this '
      f'package loads ({", ".join(FAMILIES)})'
    )
  return FAMILIES[model_type]


def _languages(directory: str, source_lang: str | None, target_lang: str | None) -> None:
  if not source_lang or not target_lang:
    raise hf_bart.HuggingFaceError(
      f'{directory} is a many-to-many model: give the source and target languages as its codes '
      '(e.g. --source_lang=eng_Latn --target_lang=fra_Latn for NLLB, __en__ and __fr__ for M2M100)'
    )


def load_tokenizer(
  directory: str,
  source_lang: str | None = None,
  target_lang: str | None = None,
  legacy_behaviour: bool | None = None,
):
  """The directory's tokenizer (for one language pair, and NLLB's `legacy_behaviour` as
  `m2m100.M2M100Tokenizer`'s, for a many-to-many model)."""
  if family(directory) == 'marian':
    from transformer.pretrained import marian

    return marian.load_tokenizer(directory)
  from transformer.pretrained import m2m100

  _languages(directory, source_lang, target_lang)
  return m2m100.load_tokenizer(directory, source_lang, target_lang, legacy_behaviour)


def load(
  directory: str,
  *,
  source_lang: str | None = None,
  target_lang: str | None = None,
  dtype: str = 'float32',
  param_dtype: str = 'float32',
  legacy_behaviour: bool | None = None,
) -> tuple[Any, Any]:
  """(model in eval mode, tokenizer) of a Marian or M2M100 directory (the many-to-many options as
  `m2m100.load`'s)."""
  if family(directory) == 'marian':
    from transformer.pretrained import marian

    return marian.load(directory, dtype=dtype)
  from transformer.pretrained import m2m100

  _languages(directory, source_lang, target_lang)
  return m2m100.load(
    directory,
    source_lang=source_lang,
    target_lang=target_lang,
    dtype=dtype,
    param_dtype=param_dtype,
    legacy_behaviour=legacy_behaviour,
  )


def generation_defaults(directory: str) -> dict[str, Any]:
  """How the directory's model asks to be decoded: `beam_size`, `forced_eos`
  (`hf_bart.generation_defaults`, for either family)."""
  family(directory)  # one this package loads
  return hf_bart.generation_defaults(directory)


def save(model, tokenizer, directory: str) -> None:
  """Writes `model` as the Hugging Face directory of its tokenizer's family (an M2M100
  tokenizer: M2M100ForConditionalGeneration; otherwise MarianMTModel)."""
  from transformer.pretrained import m2m100, marian

  if isinstance(tokenizer, m2m100.M2M100Tokenizer):
    m2m100.save(model, tokenizer, directory)
  else:
    marian.save(model, tokenizer, directory)
