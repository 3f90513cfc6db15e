"""Translating text with a trained model and scoring it with SacreBLEU.

BLEU is computed on detokenised text (the SentencePiece decode of the output) against the raw
reference strings, with SacreBLEU's default 13a tokenisation, so scores are comparable across
systems; the signature says exactly how.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

import numpy as np
import sacrebleu

from transformer import decode
from transformer.model import Transformer

log = logging.getLogger(__name__)
LENGTH_BUCKET = 16  # source lengths are padded to a multiple of this: few compilations


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
  """SacreBLEU corpus BLEU of detokenised `hypotheses` against raw `references`; and its signature."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references')
  bleu = sacrebleu.metrics.BLEU()
  score = bleu.corpus_score(list(hypotheses), [list(references)])
  return float(score.score), str(bleu.get_signature())


def translate(model: Transformer, tokenizer, sentences: Sequence[str], *, beam_size: int = 4,
              alpha: float = 0.6, batch_size: int = 32, extra_length: int = 50,
              warn=None) -> list[str]:
  """Translates `sentences` in order (one output per input; an empty input gives '').

  Sentences are sorted by length and batched, source lengths padded to a multiple of 16 so only a
  few shapes compile. A source longer than the model's `max_length` (EOS included) is truncated
  to fit, and `warn` (default: stderr) is told which line.
  """
  config = model.config
  warn = warn or (lambda message: print(message, file=sys.stderr))
  max_source = config.max_length - 1  # room for EOS
  encoded: list[list[int] | None] = []
  for number, sentence in enumerate(sentences, start=1):
    if not sentence.strip():
      encoded.append(None)
      continue
    ids = tokenizer.encode(sentence)
    if len(ids) > max_source:
      warn(f'line {number}: {len(ids)} tokens, longer than the model\'s {max_source}; truncated')
      ids = ids[:max_source]
    encoded.append(ids + [config.eos_id])
  outputs = [''] * len(sentences)
  order = sorted((i for i, ids in enumerate(encoded) if ids is not None), key=lambda i: len(encoded[i]))
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    longest = max(len(encoded[i]) for i in chunk)
    length = min(-(-longest // LENGTH_BUCKET) * LENGTH_BUCKET, config.max_length)
    src = np.full((batch_size, length), config.pad_id, np.int32)  # fixed batch: one compilation
    for row, i in enumerate(chunk):
      src[row, :len(encoded[i])] = encoded[i]
    max_length = min(longest + extra_length, config.max_length)
    tokens = np.asarray(decode.generate(model, src, beam_size=beam_size, alpha=alpha,
                                        max_length=max_length))
    for row, i in enumerate(chunk):
      outputs[i] = tokenizer.decode(tokens[row])
  return outputs
