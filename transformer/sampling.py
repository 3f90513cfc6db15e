"""Sampling the next token: temperature, top-k and top-p (nucleus), seeded per sentence.

A sentence's random stream depends only on the seed and the sentence's own seed number (its
place in the input, not in a batch), so its samples are the same whatever batch it is decoded
in, and the same from run to run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


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
      raise ValueError(f'temperature must be > 0, got {self.temperature}')
    if self.top_k < 0:
      raise ValueError(f'top_k must be >= 0, got {self.top_k}')
    if not 0 < self.top_p <= 1:
      raise ValueError(f'top_p must be in (0, 1], got {self.top_p}')


def filtered_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
  """`[rows, vocab]` logits / temperature, -inf outside the top-k and the top-p nucleus."""
  logits = logits.astype(jnp.float32) / sampling.temperature
  if sampling.top_k:
    kth = jax.lax.top_k(logits, min(sampling.top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
    # The smallest logit still inside the nucleus: the first whose cumulative mass reaches p.
    inside = jnp.sum(cumulative < sampling.top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ordered, jnp.minimum(inside, logits.shape[-1] - 1), axis=-1)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def picker(sampling: Sampling, row_seeds: jax.Array) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`(logits [rows, vocab], step) -> [rows]` int32 tokens drawn with each row's own key:
  fold_in(fold_in(key(seed), row seed), step)."""
  base = jax.random.key(sampling.seed)

  def pick(logits: jax.Array, step: jax.Array) -> jax.Array:
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(base, s), step))(row_seeds)
    draw = lambda key, row: jax.random.categorical(key, row)
    return jax.vmap(draw)(keys, filtered_logits(logits, sampling)).astype(jnp.int32)

  return pick
