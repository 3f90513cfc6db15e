"""Scoring translations with SacreBLEU: corpus BLEU and the Evaluator of validation and test.

BLEU is computed on detokenised text (the tokenizer's decode of the output) against the raw
reference strings, with SacreBLEU's default 13a tokenisation, so scores are comparable across
systems; the signature says exactly how.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import sacrebleu

from transformer.model import Transformer
from transformer.translate import translate


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
  """SacreBLEU corpus BLEU of detokenised `hypotheses` against raw `references`; and its signature."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references')
  bleu = sacrebleu.metrics.BLEU()
  score = bleu.corpus_score(list(hypotheses), [list(references)])
  return float(score.score), str(bleu.get_signature())


@dataclasses.dataclass
class Evaluator:
  """Translates and scores sentence pairs with one set of decoding options; serves both the
  periodic validation and the final test."""

  tokenizer: object
  alpha: float = 0.6
  batch_size: int = 32
  extra_length: int = 50
  warn: Callable[[str], None] | None = None

  def translate(self, model: Transformer, sources: Sequence[str], beam_size: int) -> list[str]:
    return translate(
      model,
      self.tokenizer,
      sources,
      beam_size=beam_size,
      alpha=self.alpha,
      batch_size=self.batch_size,
      extra_length=self.extra_length,
      warn=self.warn,
    )

  def bleu(
    self, model: Transformer, pairs: Sequence[tuple[str, str]], beam_size: int
  ) -> tuple[float, str, list[str]]:
    """(BLEU, SacreBLEU signature, hypotheses) of `model` on `(source, reference)` pairs."""
    hypotheses = self.translate(model, [s for s, _ in pairs], beam_size)
    bleu, signature = corpus_bleu(hypotheses, [t for _, t in pairs])
    return bleu, signature, hypotheses
