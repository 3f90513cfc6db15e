"""Translating text with a model: `translate(model, tokenizer, sentences)` and
`translate_n_best`, what the translate command, training's evaluation and the export run.

Sentences are encoded with the tokenizer's source end, sorted by length and decoded in batches
of few shapes (`batches`); one sentence's translation does not depend on the others.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
  from transformer.decoding.batch import Batch


def _encode_sources(
  tokenizer, sentences: Sequence[str], config, warn: Callable[[str], None]
) -> list[list[int] | None]:
  """Ids of each sentence with the tokenizer's source end (EOS, or what its `end_ids` says),
  None for an empty one; over-long ones truncated (with a warning)."""
  from transformer.input_pipeline.special_ids import end_ids

  end = end_ids(tokenizer, 'source', config.eos_id)
  max_positions = config.max_positions
  max_source = max_positions - len(end)
  encoded: list[list[int] | None] = []
  for number, sentence in enumerate(sentences, start=1):
    if not sentence.strip():
      encoded.append(None)
      continue
    ids = list(tokenizer.encode(sentence))
    if len(ids) > max_source:
      warn(f"line {number}: {len(ids)} tokens, longer than the model's {max_source}; truncated")
      ids = ids[:max_source]
    encoded.append(ids + end)
  return encoded


def batches(
  lengths: dict[int, int], rows_for: Callable[[int], int], limit: int
) -> list[tuple[list[int], int]]:
  """Sentences (index -> tokens) grouped shortest first: [(indices, padded length)], the length
  rounded up to a multiple of 16 (at most `limit`), each group at most `rows_for(that length)`
  sentences long."""
  from transformer.decoding import search

  groups: list[list[int]] = []
  for i in sorted(lengths, key=lambda i: lengths[i]):
    if not groups or len(groups[-1]) + 1 > rows_for(search.bucket(lengths[i], limit)):
      groups.append([])
    groups[-1].append(i)
  return [(group, search.bucket(max(lengths[i] for i in group), limit)) for group in groups]


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """One translation: its text, its length-normalised score (what beam search ranks by: log P
  / lp(length)), its log-probability log P (EOS included) and, when asked for, its Pharaoh
  alignment to the source (`transformer.decoding.alignment`)."""

  text: str
  score: float
  log_prob: float
  alignment: str | None = None


def translate(
  model: Any, tokenizer, sentences: Sequence[str], options=None, **keywords
) -> list[str]:
  """Translates `sentences` in order (one output per input; an empty input gives ''): the best
  hypothesis of `translate_n_best` (same arguments) without its scores."""
  hypotheses = translate_n_best(model, tokenizer, sentences, options, scores=False, **keywords)
  return [best[0].text for best in hypotheses]


@dataclasses.dataclass(frozen=True)
class Outputs:
  """What each sentence's hypotheses carry: how many (`n_best`), their scores (False leaves
  them 0, and greedy search then skips the pass that computes them), and their alignment to
  the source ('words', 'pieces' or None)."""

  n_best: int = 1
  scores: bool = True
  alignment: str | None = None


def translate_n_best(
  model: Any,
  tokenizer,
  sentences: Sequence[str],
  options=None,
  *,
  n_best: int = 1,
  scores: bool = True,
  num_samples: int = 1,
  batch_size: int = 32,
  max_batch_tokens: int | None = None,
  prefixes: Sequence[str] | None = None,
  alignment: str | None = None,
  warn: Callable[[str], None] | None = None,
  **overrides,
) -> list[list[Hypothesis]]:
  """The `n_best` best translations of each sentence, best first (an empty input gives empty
  hypotheses scored 0).

  Args:
    model: a `Transformer` or an `transformer.decoding.ensemble.Ensemble`.
    options: `transformer.decoding.options.DecodingOptions`; `overrides` replace its fields
      (`beam_size=1`, `length_penalty=1.0`, `sampling=Sampling(...)`, ...).
    n_best, scores, alignment: what each hypothesis carries (`Outputs`).
    num_samples: with sampling, each sentence's samples instead of n-best hypotheses: sample j
      of sentence i has seed number i * num_samples + j, whatever its batch.
    batch_size, max_batch_tokens: sentences are sorted by length and decoded `batch_size` at a
      time, or as many as fit in `max_batch_tokens` padded source tokens (CTranslate2's
      `batch_type='tokens'`); lengths padded to multiples of 16, few shapes compile.
    prefixes: one target text per sentence that its translations start with ('' for none).
    warn: told of truncated inputs (default: stderr). A source or prefix longer than the model's
      positions is truncated.

  A sentence's translation does not depend on the others.
  """
  from transformer.decoding.options import with_overrides

  options = with_overrides(options, overrides)
  options.check_n_best(n_best)
  outputs = Outputs(n_best, scores, alignment)
  warn = warn or (lambda message: print(message, file=sys.stderr))
  copies = 1 if options.sampling is None else num_samples  # rows per sentence: its samples
  encoded = Encoded.of(tokenizer, sentences, prefixes, model.config, copies, warn)
  found = [[Hypothesis('', 0.0, 0.0)] * (n_best * copies) for _ in sentences]
  rows_for = lambda length: max(1, max_batch_tokens // length) if max_batch_tokens else batch_size
  for chunk, length in batches(encoded.lengths(), rows_for, model.config.max_positions):
    batch = encoded.batch(chunk, length, rows_for(length))
    decoded = _decode_rows(model, tokenizer, batch, options, outputs, len(chunk))
    for unit, best in zip(chunk, decoded):
      if options.sampling is None:
        found[unit] = best
      else:
        found[unit // copies][unit % copies] = best[0]
  return found


@dataclasses.dataclass(frozen=True)
class Encoded:
  """The sentences of one call as ids: each source with its end (None for an empty one), each
  target prefix (or None without prefixes), and `copies` rows per sentence (its samples): row
  unit `u` is sentence `u // copies`."""

  sources: list[list[int] | None]
  prefixes: list[list[int]] | None
  copies: int
  pad_id: int
  max_positions: int
  forced_bos_id: int | None  # a many-to-many tokenizer's target language

  @classmethod
  def of(cls, tokenizer, sentences, prefixes, config, copies: int, warn) -> Encoded:
    max_prefix = config.max_positions - 2
    targets = _encode_prefixes(tokenizer, prefixes, len(sentences), max_prefix, warn)
    first = getattr(tokenizer, 'forced_bos_id', None)
    sources = _encode_sources(tokenizer, sentences, config, warn)
    return cls(sources, targets, copies, config.pad_id, config.max_positions, first)

  def lengths(self) -> dict[int, int]:
    """Row unit -> its source's length, for the non-empty sentences."""
    return {
      i * self.copies + j: len(ids)
      for i, ids in enumerate(self.sources)
      if ids
      for j in range(self.copies)
    }

  def batch(self, chunk: list[int], length: int, rows: int) -> Batch:
    """The `Batch` of the row units `chunk`, `rows` rows of sources `length` long (rows past
    the chunk are padding, so that few shapes compile); each row's seed number is its unit."""
    from transformer.decoding.batch import Batch

    src = np.full((rows, length), self.pad_id, np.int32)
    seeds = np.zeros(rows, np.int32)
    for row, unit in enumerate(chunk):
      ids = self.sources[unit // self.copies]
      src[row, : len(ids)] = ids
      seeds[row] = unit
    prefix = self._prefix(chunk, rows)
    forced = None
    if self.forced_bos_id is not None and prefix is None:  # with prefixes, they hold it
      forced = np.full(rows, self.forced_bos_id, np.int32)
    return Batch.of(src, row_seeds=seeds, prefix=prefix, forced_bos=forced)

  def _prefix(self, chunk: list[int], rows: int) -> np.ndarray | None:
    """The chunk's target prefixes `[rows, width]`, right-padded (width a multiple of 16 below
    the model's positions), or None without prefixes."""
    from transformer.decoding import search

    if self.prefixes is None:
      return None
    longest = max([len(self.prefixes[unit // self.copies]) for unit in chunk] + [1])
    prefix = np.full((rows, search.bucket(longest, self.max_positions - 1)), self.pad_id, np.int32)
    for row, unit in enumerate(chunk):
      ids = self.prefixes[unit // self.copies]
      prefix[row, : len(ids)] = ids
    return prefix


def _encode_prefixes(
  tokenizer, prefixes: Sequence[str] | None, count: int, max_length: int, warn
) -> list[list[int]] | None:
  """Target ids of each prefix (none for ''), over-long ones truncated with a warning."""
  if prefixes is None:
    return None
  if len(prefixes) != count:
    raise ValueError(f'{len(prefixes)} target prefixes for {count} sentences')
  encoded = []
  for number, prefix in enumerate(prefixes, start=1):
    ids = list(tokenizer.encode(prefix, 'target')) if prefix.strip() else []
    first = getattr(tokenizer, 'forced_bos_id', None)  # a target language, which encode adds
    if first is not None and not ids:
      ids = [first]
    if len(ids) > max_length:
      warn(
        f'line {number}: a target prefix of {len(ids)} tokens, more than {max_length}; truncated'
      )
      ids = ids[:max_length]
    encoded.append(ids)
  return encoded


def _decode(model, batch: Batch, options, outputs: Outputs) -> tuple[np.ndarray, ...]:
  """(tokens `[rows, n_best, length]`, scores, log-probabilities `[rows, n_best]`) of a batch."""
  from transformer.decoding import search

  if outputs.scores or outputs.n_best > 1:
    found = search.generate_n_best(model, batch, options, n_best=outputs.n_best)
    return tuple(map(np.asarray, found))
  tokens = np.asarray(search.generate(model, batch, options))[:, None]
  return tokens, np.zeros(tokens.shape[:2]), np.zeros(tokens.shape[:2])


def _decode_rows(
  model, tokenizer, batch: Batch, options, outputs: Outputs, rows: int
) -> list[list[Hypothesis]]:
  """The hypotheses of the batch's first `rows` rows (the others pad it to its fixed size)."""
  from transformer.decoding import alignment as alignment_lib

  tokens, score, log_prob = _decode(model, batch, options, outputs)
  aligned = None
  if outputs.alignment:
    src = np.asarray(batch.src_tokens)
    aligned = alignment_lib.alignments(model, tokenizer, src, tokens, outputs.alignment)
  return [
    [
      Hypothesis(
        tokenizer.decode(tokens[row, n]),
        float(score[row, n]),
        float(log_prob[row, n]),
        None if aligned is None else aligned[row][n],
      )
      for n in range(tokens.shape[1])
    ]
    for row in range(rows)
  ]
