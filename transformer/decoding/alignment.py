"""Source–target alignments from cross-attention, as fairseq's `--print-alignment` makes them.

A translation's tokens are fed back through the decoder in one teacher-forced pass; the
cross-attention weights of the **last decoder layer, averaged over its heads** (and over the
members of an ensemble) say where each target token looked. Each target token (EOS and padding
excepted) is aligned to the source token it attends to most (EOS and padding excepted): a hard
alignment, written in Pharaoh format, `source-target` index pairs in target order
(`0-0 2-1 1-2`).

Alignments come on SentencePiece pieces, or on words: a piece that starts with '▁' starts a
word, so piece pairs map to pairs of the words that hold them (duplicates merged).
"""

from __future__ import annotations

import functools
from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from transformer.decoding import ensemble as ensemble_lib
from transformer.model.encoder_decoder import shift_right

LEVELS = ('words', 'pieces')
WORD_START = '\u2581'


def cross_attention(model, src_tokens: np.ndarray, tokens: np.ndarray) -> np.ndarray:
  """`[batch, tgt_length, src_length]` weights of the last decoder layer's cross-attention,
  averaged over heads and ensemble members, for target `tokens` `[batch, tgt_length]` (the
  weights of row j are those of the step that predicts `tokens[:, j]`)."""
  graphdefs, states = zip(*(nnx.split(m) for m in ensemble_lib.members_of(model)))
  return np.asarray(_cross_attention(graphdefs, states, jnp.asarray(src_tokens), tokens))


@functools.partial(jax.jit, static_argnames=('graphdefs',))
def _cross_attention(graphdefs, states, src_tokens: jax.Array, tokens: jax.Array) -> jax.Array:
  weights = []
  for graphdef, state in zip(graphdefs, states):
    model = nnx.merge(graphdef, state)
    model.eval()
    model.decoder.layers[-1].cross_attention.sow_weights = True  # the only layer that sows
    forward = lambda m: m(src_tokens, shift_right(tokens, m.config.bos_id))
    if hasattr(nnx, 'capture'):  # flax >= 0.12.5
      _, sown = nnx.capture(forward, nnx.Intermediate)(model)
    else:
      forward(model)
      sown = nnx.pop(model, nnx.Intermediate)
    (layer_weights,) = jax.tree.leaves(sown)  # [batch, heads, tgt, src]
    weights.append(layer_weights.mean(axis=1))
  return sum(weights) / len(weights)


def hard_alignment(
  weights: np.ndarray, src_ids: Sequence[int], tgt_ids: Sequence[int], *, pad_id: int, eos_id: int
) -> list[tuple[int, int]]:
  """(source index, target index) pairs: each target token (EOS and pad excepted) with the
  source token (EOS and pad excepted) of its largest weight in `weights` `[tgt, src]`."""
  src_ids, tgt_ids = np.asarray(src_ids), np.asarray(tgt_ids)
  src_valid = (src_ids != pad_id) & (src_ids != eos_id)
  if not src_valid.any():
    return []
  pairs = []
  for j, token in enumerate(tgt_ids):
    if token in (pad_id, eos_id):
      continue
    row = np.where(src_valid, weights[j, : len(src_ids)], -np.inf)
    pairs.append((int(row.argmax()), j))
  return pairs


def word_indices(pieces: Sequence[str]) -> list[int]:
  """The word each piece belongs to: a piece starting with '▁' starts a new word."""
  words, word = [], -1
  for piece in pieces:
    if piece.startswith(WORD_START) or word < 0:
      word += 1
    words.append(word)
  return words


def to_words(
  pairs: Sequence[tuple[int, int]], src_pieces: Sequence[str], tgt_pieces: Sequence[str]
) -> list[tuple[int, int]]:
  """Piece pairs -> the distinct pairs of the words that hold them, in target order (as piece
  pairs come)."""
  src_words, tgt_words = word_indices(src_pieces), word_indices(tgt_pieces)
  return sorted({(src_words[s], tgt_words[t]) for s, t in pairs}, key=lambda p: (p[1], p[0]))


def pharaoh(pairs: Sequence[tuple[int, int]]) -> str:
  """`[(0, 0), (2, 1)]` -> `'0-0 2-1'`."""
  return ' '.join(f'{s}-{t}' for s, t in pairs)


def alignments(
  model, tokenizer, src_tokens: np.ndarray, tokens: np.ndarray, level: str = 'words'
) -> list[list[str]]:
  """Pharaoh alignments of each hypothesis: `src_tokens` `[rows, src_length]`, `tokens`
  `[rows, n, length]` -> `[rows][n]` strings, on `level` 'words' or 'pieces'."""
  if level not in LEVELS:
    raise ValueError(f'alignment level must be one of {LEVELS}, got {level!r}')
  config = model.config
  rows, n, _ = tokens.shape
  flat = tokens.reshape(rows * n, -1)
  weights = cross_attention(model, np.repeat(src_tokens, n, axis=0), flat)
  ids = dict(pad_id=config.pad_id, eos_id=config.eos_id)
  out = []
  for row in range(rows):
    src_ids = _until_eos(src_tokens[row], **ids)
    src_pieces = tokenizer.pieces(src_ids, 'source')
    found = []
    for h in range(n):
      tgt_ids = _until_eos(flat[row * n + h], **ids)
      pairs = hard_alignment(weights[row * n + h], src_ids, tgt_ids, **ids)
      if level == 'words':
        pairs = to_words(pairs, src_pieces, tokenizer.pieces(tgt_ids, 'target'))
      found.append(pharaoh(pairs))
    out.append(found)
  return out


def _until_eos(ids: np.ndarray, *, pad_id: int, eos_id: int) -> list[int]:
  """The tokens before the first EOS, padding removed."""
  kept = []
  for i in ids.tolist():
    if i == eos_id:
      break
    if i != pad_id:
      kept.append(i)
  return kept
