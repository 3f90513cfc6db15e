"""Translating through a CTranslate2 model exported by `transformer.export`, as
`transformer.decoding.translation` translates: the same source ids (truncated alike, EOS appended by
CTranslate2), the same per-sentence limit on generated tokens, the same decoding of the output.
Shared by the export tests and `benchmarks.decode_vs_ctranslate2`.
"""

from __future__ import annotations

from typing import Sequence

from transformer.export import ctranslate2_model


def source_ids(tokenizer, config, sentences: Sequence[str]) -> list[list[int] | None]:
  """Source ids without EOS as `translate` feeds them (None for an empty line)."""
  return [
    list(tokenizer.encode(s))[: config.max_positions - 1] if s.strip() else None for s in sentences
  ]


def limits_of(ids: list[list[int] | None], config, extra_length: int) -> list[int]:
  """Each sentence's limit on generated tokens (EOS included), as `search.generate` sets it."""
  return [min(len(x or []) + 1 + extra_length, config.max_positions) for x in ids]


def translate(
  translator,
  tokenizer,
  config,
  sentences: Sequence[str],
  beam_size: int,
  alpha: float,
  *,
  limits: Sequence[int] | None = None,
  extra_length: int = 50,
  batch_size: int = 32,
  source_suffix: Sequence[str] = (),
) -> list[str]:
  """`sentences` translated by `translator` (a `ctranslate2.Translator`); sentences with the
  same limit are decoded together, since CTranslate2's max_decoding_length is one per call.
  `source_suffix`: tokens to append to every source (`['</s>']` for a model converted by
  CTranslate2's own transformers converter, which leaves EOS to the caller)."""
  vocabulary = ctranslate2_model.vocabulary_of(tokenizer, config)
  target_ids = {token: i for i, token in enumerate(vocabulary.target)}
  ids = source_ids(tokenizer, config, sentences)
  limits = list(limits) if limits is not None else limits_of(ids, config, extra_length)
  outputs = [''] * len(sentences)
  groups: dict[int, list[int]] = {}
  for i in sorted((i for i, x in enumerate(ids) if x), key=lambda i: len(ids[i])):
    groups.setdefault(limits[i], []).append(i)
  for limit, members in groups.items():
    results = translator.translate_batch(
      [[vocabulary.source[t] for t in ids[i]] + list(source_suffix) for i in members],
      beam_size=beam_size,
      length_penalty=alpha,
      max_decoding_length=limit,
      min_decoding_length=0,
      max_input_length=0,
      max_batch_size=batch_size,
    )
    for i, result in zip(members, results):
      outputs[i] = tokenizer.decode([target_ids[t] for t in result.hypotheses[0]])
  return outputs
