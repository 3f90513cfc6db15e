"""Scoring translations with SacreBLEU: corpus BLEU, the Evaluator of validation and test, and
the choice of beam size and length penalty on validation.

BLEU is computed on detokenised text (the tokenizer's decode of the output) against the raw
reference strings, with SacreBLEU's default 13a tokenisation, so scores are comparable across
systems; the signature says exactly how.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import sacrebleu

from transformer.decoding.options import DecodingOptions, with_overrides
from transformer.decoding.translation import translate
from transformer.model.encoder_decoder import Transformer


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
  """SacreBLEU corpus BLEU of detokenised `hypotheses` against raw `references`; and its signature."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references')
  bleu = sacrebleu.metrics.BLEU()
  score = bleu.corpus_score(list(hypotheses), [list(references)])
  return float(score.score), str(bleu.get_signature())


@dataclasses.dataclass
class Evaluator:
  """Translates and scores sentence pairs with one set of decoding options (each call may
  override some, e.g. the beam size); serves the periodic validation, the choice of the length
  penalty and the final test."""

  tokenizer: object
  options: DecodingOptions = DecodingOptions()
  batch_size: int = 32
  warn: Callable[[str], None] | None = None

  def translate(self, model: Transformer, sources: Sequence[str], **overrides) -> list[str]:
    return translate(
      model,
      self.tokenizer,
      sources,
      with_overrides(self.options, overrides),
      batch_size=self.batch_size,
      warn=self.warn,
    )

  def bleu(
    self, model: Transformer, pairs: Sequence[tuple[str, str]], **overrides
  ) -> tuple[float, str, list[str]]:
    """(BLEU, SacreBLEU signature, hypotheses) of `model` on `(source, reference)` pairs."""
    hypotheses = self.translate(model, [s for s, _ in pairs], **overrides)
    bleu, signature = corpus_bleu(hypotheses, [t for _, t in pairs])
    return bleu, signature, hypotheses


def choose_decoding(
  evaluator: Evaluator,
  model: Transformer,
  pairs: Sequence[tuple[str, str]],
  beam_sizes: Sequence[int],
  length_penalties: Sequence[float],
  say: Callable[[str], None] = print,
) -> dict[str, Any]:
  """The beam size and length penalty α with the best BLEU on `pairs` (validation), as the
  paper tuned them on the development set: every beam size, each beam > 1 with every α of
  `length_penalties` (the first α wins ties, and a smaller beam wins ties with a larger one).

  Returns {'beam_size', 'length_penalty', 'validation_bleu'} of the best, 'length_penalties'
  (the best α of each beam size, keyed by its str) and 'tried' (every beam, α and BLEU)."""
  tried = []
  for beam in sorted(beam_sizes):
    for length_penalty in length_penalties if beam > 1 else length_penalties[:1]:
      bleu, _, _ = evaluator.bleu(model, pairs, beam_size=beam, length_penalty=length_penalty)
      tried.append({'beam_size': beam, 'length_penalty': length_penalty, 'bleu': bleu})
      say(f'  validation BLEU, beam {beam}, length penalty {length_penalty}: {bleu:.2f}')
  best_of = lambda rows: max(rows, key=lambda row: row['bleu'])  # the first of equals
  best = best_of(tried)
  per_beam = {
    str(beam): best_of([r for r in tried if r['beam_size'] == beam])['length_penalty']
    for beam in sorted(beam_sizes)
  }
  return {
    'beam_size': best['beam_size'],
    'length_penalty': best['length_penalty'],
    'validation_bleu': best['bleu'],
    'length_penalties': per_beam,
    'tried': tried,
  }
