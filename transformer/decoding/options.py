"""How a model decodes: one small options object shared by `search.generate`, `translate`, the
evaluator, the export and the command line.

    options = DecodingOptions(beam_size=4, length_penalty=1.0)
    search.generate(model, src, options)                     # or search.generate(model, src, beam_size=1)
    translate(model, tokenizer, sentences, options, max_new_tokens=20)   # keywords override fields

Every function that decodes takes `options` (default `DecodingOptions()`) and keyword overrides
of its fields (`with_overrides`), so the fields are written down once, here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

LENGTH_NORMALIZATIONS = ('gnmt', 'hf', 'ctranslate2')


class OptionError(ValueError):
  """A decoding option the search cannot take: `field` names it (the translate command's flag
  of the same name), `problem` says what it accepts."""

  def __init__(self, field: str, problem: str):
    super().__init__(f'{field} {problem}')
    self.field, self.problem = field, problem


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Draw each token from softmax(logits / temperature), restricted to the `top_k` most likely
  tokens (0: all) and to the smallest set whose probability reaches `top_p` (1.0: all)."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if not self.temperature > 0:
      raise OptionError('temperature', f'must be > 0, got {self.temperature}')
    if self.top_k < 0:
      raise OptionError('top_k', f'must be >= 0, got {self.top_k}')
    if not 0 < self.top_p <= 1:
      raise OptionError('top_p', f'must be in (0, 1], got {self.top_p}')


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
  """Decoding settings.

  Attributes:
    beam_size: hypotheses kept per sentence; 1 is greedy decoding (or sampling).
    length_penalty: the length-penalty exponent α (transformers' and CTranslate2's
      `length_penalty`; GNMT's α).
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
  length_penalty: float = 0.6
  length_normalization: str = 'gnmt'
  max_new_tokens: int | None = None
  extra_length: int = 50
  forced_eos: bool = False
  sampling: Sampling | None = None

  def __post_init__(self):
    if self.beam_size < 1:
      raise OptionError('beam_size', f'must be >= 1, got {self.beam_size}')
    if isinstance(self.length_penalty, (int, float)) and self.length_penalty < 0:  # not traced
      raise OptionError('length_penalty', f'must be >= 0, got {self.length_penalty}')
    if self.length_normalization not in LENGTH_NORMALIZATIONS:
      raise OptionError(
        'length_normalization',
        f'must be one of {LENGTH_NORMALIZATIONS}, got {self.length_normalization!r}',
      )
    if self.max_new_tokens is not None and self.max_new_tokens < 1:
      raise OptionError('max_new_tokens', f'must be >= 1, got {self.max_new_tokens}')
    if self.extra_length < 0:
      raise OptionError('extra_length', f'must be >= 0, got {self.extra_length}')
    if self.sampling is not None and self.beam_size != 1:
      raise OptionError(
        'beam_size', f'must be 1 with sampling (it draws one token per step), got {self.beam_size}'
      )

  def check_n_best(self, n_best: int) -> None:
    """Raises OptionError unless `n_best` hypotheses can be asked of this search (1 to the beam
    size)."""
    if not 1 <= n_best <= self.beam_size:
      raise OptionError(
        'n_best', f'must be between 1 and the beam size {self.beam_size}, got {n_best}'
      )

  def search_settings(self) -> DecodingOptions:
    """The fields that change the traced search: the limits and α are arrays, so one
    compilation serves any `max_new_tokens`, `extra_length` and `length_penalty`."""
    return dataclasses.replace(self, max_new_tokens=None, extra_length=0, length_penalty=0.0)


def with_overrides(options: DecodingOptions | None, overrides: dict[str, Any]) -> DecodingOptions:
  """`options` (default `DecodingOptions()`) with `overrides` of its fields; an unknown name is a
  TypeError that names it."""
  fields = {f.name for f in dataclasses.fields(DecodingOptions)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise TypeError(f'unknown decoding options {unknown}; DecodingOptions has {sorted(fields)}')
  return dataclasses.replace(options or DecodingOptions(), **overrides)
