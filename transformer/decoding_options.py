"""How a model decodes: one small options object shared by `search.generate`, `translate`, the
evaluator, the export and the command line.

    options = DecodingOptions(beam_size=4, alpha=1.0)
    search.generate(model, src, options)                     # or search.generate(model, src, beam_size=1)
    translate(model, tokenizer, sentences, options, max_new_tokens=20)   # keywords override fields

Every function that decodes takes `options` (default `DecodingOptions()`) and keyword overrides
of its fields (`with_overrides`), so the fields are written down once, here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformer.sampling import Sampling

LENGTH_NORMALIZATIONS = ('gnmt', 'hf', 'ctranslate2')


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
  """Decoding settings.

  Attributes:
    beam_size: hypotheses kept per sentence; 1 is greedy decoding (or sampling).
    alpha: the length-penalty exponent α.
    length_normalization: 'gnmt' ranks beams by log P / ((5 + len) / 6)^α; 'hf' by
      log P / len^α as transformers' `generate`; 'ctranslate2' as 'hf' and stops a sentence
      once `beam_size` hypotheses have ended, as CTranslate2 does.
    max_new_tokens: tokens every sentence may generate (EOS and a forced prefix included);
      None: each sentence's source length + `extra_length`, capped at the model's positions.
    extra_length: see `max_new_tokens`.
    forced_eos: a sentence that reaches its limit ends with EOS (transformers'
      `forced_eos_token_id`, which opus-mt models set).
    sampling: draw each token (temperature, top-k, top-p, seed) instead of searching; needs
      beam_size 1.
  """

  beam_size: int = 4
  alpha: float = 0.6
  length_normalization: str = 'gnmt'
  max_new_tokens: int | None = None
  extra_length: int = 50
  forced_eos: bool = False
  sampling: Sampling | None = None

  def __post_init__(self):
    if self.beam_size < 1:
      raise ValueError(f'beam_size must be >= 1, got {self.beam_size}')
    if self.length_normalization not in LENGTH_NORMALIZATIONS:
      raise ValueError(
        f'length_normalization must be one of {LENGTH_NORMALIZATIONS}, '
        f'got {self.length_normalization!r}'
      )
    if self.max_new_tokens is not None and self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {self.max_new_tokens}')
    if self.extra_length < 0:
      raise ValueError(f'extra_length must be >= 0, got {self.extra_length}')
    if self.sampling is not None and self.beam_size != 1:
      raise ValueError(
        f'sampling draws one token per step: it needs beam_size=1, got {self.beam_size}'
      )

  def search_settings(self) -> DecodingOptions:
    """The fields that change the traced search: the limits and α are arrays, so one
    compilation serves any `max_new_tokens`, `extra_length` and `alpha`."""
    return dataclasses.replace(self, max_new_tokens=None, extra_length=0, alpha=0.0)


def with_overrides(options: DecodingOptions | None, overrides: dict[str, Any]) -> DecodingOptions:
  """`options` (default `DecodingOptions()`) with `overrides` of its fields; an unknown name is a
  TypeError that names it."""
  fields = {f.name for f in dataclasses.fields(DecodingOptions)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise TypeError(f'unknown decoding options {unknown}; DecodingOptions has {sorted(fields)}')
  return dataclasses.replace(options or DecodingOptions(), **overrides)
