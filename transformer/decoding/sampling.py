"""Sampling the next token: temperature, top-k and top-p (nucleus), seeded per sentence.

A sentence's random stream depends only on the seed and the sentence's own seed number (its
place in the input, not in a batch), so its samples are the same whatever batch it is decoded
in, and the same from run to run.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from transformer.decoding.options import Sampling


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
