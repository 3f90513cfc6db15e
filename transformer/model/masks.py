"""Attention masks: padding, causal and packed-segment masks, and the additive bias.

A mask is boolean, `True` where a query may attend to a key, shaped
`[batch, 1, q_length, kv_length]` (the `1` broadcasts over heads). Masks are combined with logical
AND and turned into an additive bias only once, right before the softmax, so a fully masked row
gets a large *finite* negative bias everywhere: its softmax is uniform instead of NaN, and the
padded position's (ignored) output stays finite.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

# Large but finite: -inf would turn a fully masked row into NaN (inf - inf) in the softmax.
MASK_BIAS = -1e9


def padding_mask(query_valid: jax.Array, key_valid: jax.Array) -> jax.Array:
  """Mask of (query, key) pairs where both positions hold real tokens.

  Args:
    query_valid: `[batch, q_length]` bool, True on non-padding query positions.
    key_valid: `[batch, kv_length]` bool, True on non-padding key positions.

  Returns:
    `[batch, 1, q_length, kv_length]` bool.
  """
  return nnx.make_attention_mask(query_valid, key_valid, jnp.logical_and, dtype=jnp.bool_)


def causal_mask(length: int) -> jax.Array:
  """Mask that lets position i attend to positions j <= i only.

  Returns:
    `[1, 1, length, length]` bool (lower triangular).
  """
  return nnx.make_causal_mask(jnp.zeros((1, length)), dtype=jnp.bool_)


def segment_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
  """Mask that keeps packed examples apart: attend only within the same segment id.

  Args:
    query_segments: `[batch, q_length]` int segment ids (0 marks padding).
    key_segments: `[batch, kv_length]` int segment ids.

  Returns:
    `[batch, 1, q_length, kv_length]` bool.
  """
  return nnx.make_attention_mask(query_segments, key_segments, jnp.equal, dtype=jnp.bool_)


def combine(*masks: jax.Array | None) -> jax.Array | None:
  """Logical AND of the given masks (None entries are ignored; None if all are None)."""
  return nnx.combine_masks(*masks, dtype=jnp.bool_)


def mask_to_bias(mask: jax.Array | None, dtype=jnp.float32) -> jax.Array | None:
  """Additive attention bias: 0 where `mask` is True, `MASK_BIAS` where it is False.

  Args:
    mask: `[batch, 1, q_length, kv_length]` bool, or None.

  Returns:
    `[batch, 1, q_length, kv_length]` of `dtype`, or None.
  """
  if mask is None:
    return None
  return jnp.where(mask, 0.0, MASK_BIAS).astype(dtype)
