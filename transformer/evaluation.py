"""Translating text with a trained model and scoring it with SacreBLEU.

BLEU is computed on detokenised text (the tokenizer's decode of the output) against the raw
reference strings, with SacreBLEU's default 13a tokenisation, so scores are comparable across
systems; the signature says exactly how.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Sequence

import numpy as np
import sacrebleu

from transformer import decode
from transformer.model import Transformer


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
  """SacreBLEU corpus BLEU of detokenised `hypotheses` against raw `references`; and its signature."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references')
  bleu = sacrebleu.metrics.BLEU()
  score = bleu.corpus_score(list(hypotheses), [list(references)])
  return float(score.score), str(bleu.get_signature())


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
  model: Transformer,
  tokenizer,
  sentences: Sequence[str],
  *,
  beam_size: int = 4,
  alpha: float = 0.6,
  batch_size: int = 32,
  extra_length: int = 50,
  max_new_tokens: int | None = None,
  length_normalization: str = 'gnmt',
  warn: Callable[[str], None] | None = None,
) -> list[str]:
  """Translates `sentences` in order (one output per input; an empty input gives '').

  A sentence's translation does not depend on the others: each may generate at most its own
  source length + `extra_length` tokens (or `max_new_tokens`, if given). Sentences are sorted by
  length and decoded `batch_size` at a time, with source lengths padded to a multiple of 16, so
  only a few shapes compile. A source longer than the model's `max_length` (EOS included) is
  truncated to fit, and `warn` (default: stderr) is told which line.
  """
  config = model.config
  warn = warn or (lambda message: print(message, file=sys.stderr))
  encoded = _encode_sources(tokenizer, sentences, config.eos_id, config.max_length - 1, warn)
  outputs = [''] * len(sentences)
  order = sorted(
    (i for i, ids in enumerate(encoded) if ids is not None), key=lambda i: len(encoded[i])
  )
  for start in range(0, len(order), batch_size):
    chunk = order[start : start + batch_size]
    length = decode.bucket(max(len(encoded[i]) for i in chunk), config.max_length)
    src = np.full((batch_size, length), config.pad_id, np.int32)  # fixed rows: one compilation
    for row, i in enumerate(chunk):
      src[row, : len(encoded[i])] = encoded[i]
    tokens = np.asarray(
      decode.generate(
        model,
        src,
        beam_size=beam_size,
        alpha=alpha,
        extra_length=extra_length,
        max_length=max_new_tokens,
        length_normalization=length_normalization,
      )
    )
    for row, i in enumerate(chunk):
      outputs[i] = tokenizer.decode(tokens[row])
  return outputs


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
