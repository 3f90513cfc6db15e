"""Ensembles: several models that decode together.

At every step each member's next-token distribution is computed from its own caches, and the
members' log-probabilities are averaged (a log-linear combination, as Marian's ensembles; fairseq
averages probabilities instead) and renormalised:

    log p(y | x) = log_softmax( 1/M · Σ_m log p_m(y | x) )

An ensemble of one model is that model; of two identical models, the same model again. Members
must share the vocabulary and special ids (checked when the ensemble is made); the ensemble's
`max_positions` is the smallest of its members'.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from transformer.model.encoder_decoder import Transformer, TransformerConfig

# What members must share for their distributions to be over the same tokens.
SHARED_FIELDS = ('vocab_size', 'target_vocab_size', 'pad_id', 'bos_id', 'eos_id')


class Ensemble:
  """Models that decode together (see the module docstring). Anything that decodes a
  `Transformer` (`search.generate`, `translate`) decodes an `Ensemble`."""

  def __init__(self, members: Sequence[Transformer]):
    members = tuple(members)
    if not members:
      raise ValueError('an ensemble needs at least one model')
    first = members[0].config
    for number, member in enumerate(members[1:], start=2):
      differing = [
        f'{name} {getattr(member.config, name)} (model 1: {getattr(first, name)})'
        for name in SHARED_FIELDS
        if getattr(member.config, name) != getattr(first, name)
      ]
      if differing:
        raise ValueError(
          f'model {number} of the ensemble has another vocabulary: {", ".join(differing)}'
        )
    self.members = members

  @property
  def config(self) -> TransformerConfig:
    """The first member's config, with the positions every member has."""
    positions = min(member.config.max_positions for member in self.members)
    return dataclasses.replace(self.members[0].config, max_positions=positions)


def check_vocabularies(tokenizers: Sequence, config: TransformerConfig) -> None:
  """Raises ValueError (one line) unless every tokenizer has the first one's pieces on both
  sides: members decode over the same tokens only if their vocabularies are the same."""
  sides = (('source', config.vocab_size), ('target', config.target_vocabulary))
  first = [tokenizers[0].pieces(range(size), side) for side, size in sides]
  for number, tokenizer in enumerate(tokenizers[1:], start=2):
    for (side, size), expected in zip(sides, first):
      pieces = tokenizer.pieces(range(size), side)
      if pieces != expected:
        at = next(i for i, (a, b) in enumerate(zip(pieces, expected)) if a != b)
        raise ValueError(
          f'model {number} of the ensemble has another {side} vocabulary (id {at}: '
          f'{pieces[at]!r}, model 1: {expected[at]!r})'
        )


def members_of(model: Transformer | Ensemble) -> tuple[Transformer, ...]:
  """The models that decode: an ensemble's members, or the model alone."""
  return model.members if isinstance(model, Ensemble) else (model,)


def average_log_probs(logits: Sequence[jax.Array]) -> jax.Array:
  """The ensemble's log-probabilities `[..., vocab]` from each member's logits `[..., vocab]`
  (one member: its log-softmax)."""
  log_probs = [jax.nn.log_softmax(x.astype(jnp.float32)) for x in logits]
  if len(log_probs) == 1:
    return log_probs[0]
  return jax.nn.log_softmax(sum(log_probs) / len(log_probs))
