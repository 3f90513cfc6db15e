"""Scaled dot-product attention and the two multi-head attentions of the paper (§3.2).

    SelfAttention    queries, keys and values from the same sequence (encoder; masked in the decoder)
    CrossAttention   queries from the decoder, keys and values from the encoder output C

Both share the core: project, `dot_product_attention` per head, concatenate, project with W^O.
Each has its own decoding cache: self-attention appends one key/value per generated token,
cross-attention projects the encoder output once per sentence.

Shapes use: batch `b`, query length `q`, key/value length `k`, heads `h`, head size `d_k`.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

from flax import nnx
import jax
import jax.numpy as jnp

from transformer.model import masks, precision
from transformer.parallel.sharding import logical_axes

Implementation = Literal['reference', 'xla', 'cudnn']
IMPLEMENTATIONS = ('reference', 'xla', 'cudnn')


class Cache(nnx.Variable):
  """Decoding state (keys/values seen so far); kept apart from parameters."""


class SelfCache(Cache):
  """Self-attention's decoding state: it grows by one key/value per generated token, and beam
  search reorders it with the beams."""


class CrossCache(Cache):
  """Cross-attention's keys/values of the encoder output: fixed for a sentence, the same for all
  of its beams."""


def dot_product_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  bias: jax.Array | None = None,
  *,
  dropout: Callable[[jax.Array], jax.Array] | None = None,
  implementation: Implementation = 'reference',
) -> jax.Array:
  """Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + bias) V.

  Args:
    query: `[batch, q_length, heads, head_dim]`.
    key: `[batch, kv_length, heads, head_dim]`.
    value: `[batch, kv_length, heads, head_dim]`.
    bias: additive bias broadcastable to `[batch, heads, q_length, kv_length]` (0 where allowed,
      a large negative number where masked; see `transformer.model.masks`), or None.
    dropout: applied to the attention weights (reference implementation only).
    implementation: 'reference' writes the formula out (readable, supports attention dropout);
      'xla' and 'cudnn' call `jax.nn.dot_product_attention` (cudnn: fused flash attention on GPU).

  Returns:
    `[batch, q_length, heads, head_dim]`.
  """
  if implementation != 'reference':
    if implementation not in IMPLEMENTATIONS:
      raise ValueError(
        f'unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}'
      )
    if bias is not None:
      bias = bias.astype(query.dtype)  # jax.nn.dot_product_attention wants the compute dtype
    return jax.nn.dot_product_attention(query, key, value, bias=bias, implementation=implementation)

  weights = attention_weights(query, key, bias).astype(value.dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, value)


def attention_weights(query: jax.Array, key: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """softmax(Q Kᵀ / √d_k + bias): `[batch, heads, q_length, kv_length]` float32 (rows sum to 1)."""
  d_k = query.shape[-1]
  # Logits and softmax in float32 even for bfloat16 inputs: exp() of bf16 logits loses too much.
  # (In bfloat16 the two gradient matmuls still take bf16 operands: see transformer.model.precision.)
  logits = precision.project('bqhd,bkhd->bhqk', query, key, query.dtype, float32_result=True)
  logits = logits / math.sqrt(d_k)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  return jax.nn.softmax(logits, axis=-1)


# Decoding caches are stored in the layouts the attention contractions read, so that a step does
# not transpose (copy) every cache: keys `[batch, heads, head_dim, length]` (Kᵀ of Q·Kᵀ), values
# `[batch, heads, length, head_dim]`.
def _keys_to_cache(key: jax.Array) -> jax.Array:
  """`[batch, length, heads, head_dim]` -> `[batch, heads, head_dim, length]`."""
  return key.transpose(0, 2, 3, 1)


def _keys_from_cache(key: jax.Array) -> jax.Array:
  return key.transpose(0, 3, 1, 2)


def _values_to_cache(value: jax.Array) -> jax.Array:
  """`[batch, length, heads, head_dim]` -> `[batch, heads, length, head_dim]`."""
  return value.transpose(0, 2, 1, 3)


def _values_from_cache(value: jax.Array) -> jax.Array:
  return value.transpose(0, 2, 1, 3)


def _glorot(in_axis, out_axis, batch_axis=()):
  """Glorot-uniform over the projection's fan-in (d_model) and fan-out (heads·head_dim)."""
  return nnx.initializers.variance_scaling(
    1.0, 'fan_avg', 'uniform', in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis
  )


class _MultiHeadAttention(nnx.Module):
  """What both attentions share: MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O.

  The output projection `w_o` `[heads, head_dim, d_model]` is the concatenation of the heads
  followed by W^O. Queries and values have biases (`b_q`, `b_v`); keys have none: a key bias adds
  the same q·b to every logit of a query, which the softmax cancels.
  """

  def __init__(
    self,
    d_model: int,
    num_heads: int,
    *,
    dropout_rate: float = 0.0,
    implementation: Implementation = 'reference',
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if d_model % num_heads:
      raise ValueError(f'd_model={d_model} is not divisible by num_heads={num_heads}')
    self.d_model = d_model
    self.num_heads = num_heads
    self.head_dim = d_model // num_heads
    self.implementation = implementation
    self.dtype = dtype
    h, d_k = num_heads, self.head_dim
    self._init_own(rngs, param_dtype)
    self.b_q = nnx.Param(jnp.zeros((h, d_k), param_dtype), **logical_axes('heads', 'kv'))
    self.b_v = nnx.Param(jnp.zeros((h, d_k), param_dtype), **logical_axes('heads', 'kv'))
    self.w_o = nnx.Param(
      _glorot((0, 1), 2)(rngs.params(), (h, d_k, d_model), param_dtype),
      **logical_axes('heads', 'kv', 'embed'),
    )
    self.b_o = nnx.Param(jnp.zeros((d_model,), param_dtype), **logical_axes('embed'))
    self.attention_dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    # Set to True to keep the attention weights of each call as an nnx.Intermediate
    # ('attention_weights', [batch, heads, q_length, kv_length]), e.g. to plot them.
    self.sow_weights = False
    self.cached_key: Cache | None = nnx.data(None)
    self.cached_value: Cache | None = nnx.data(None)

  def _init_own(self, rngs: nnx.Rngs, param_dtype) -> None:
    """Creates what differs between self- and cross-attention: the input projections (and
    decoding state)."""
    raise NotImplementedError

  def _project(self, x: jax.Array, kernel: nnx.Param) -> jax.Array:
    """`[b, l, d_model]` x kernel `[d_model, *out]` -> `[b, l, *out]` in the compute dtype."""
    return precision.project('bld,d...->bl...', x, kernel[...], self.dtype)

  def _bias(self, name: str) -> jax.Array:
    return getattr(self, name)[...].astype(self.dtype)

  def _attend(
    self, query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None
  ) -> jax.Array:
    """Heads `[b, q, h, d_k]` over keys/values `[b, k, h, d_k]` -> `[b, q, d_model]` (W^O applied)."""
    if self.sow_weights:
      self.sow(nnx.Intermediate, 'attention_weights', attention_weights(query, key, bias))
    dropout = self.attention_dropout if self.attention_dropout.rate > 0 else None
    heads = dot_product_attention(
      query, key, value, bias, dropout=dropout, implementation=self.implementation
    )
    out = precision.project('bqhd,hdm->bqm', heads, self.w_o[...], self.dtype)
    return out + self._bias('b_o')


class SelfAttention(_MultiHeadAttention):
  """Multi-head self-attention: queries, keys and values are projections of the same input.

  One fused kernel `w_qkv` `[d_model, 3, heads, head_dim]` projects all three (one matmul).
  Decoding: `init_cache(batch, max_length)` allocates key/value buffers of `max_length` slots,
  and each call with `use_cache=True` appends its keys/values and attends to the slots written so
  far (the causal mask over the cache is built here).
  """

  def _init_own(self, rngs: nnx.Rngs, param_dtype) -> None:
    shape = (self.d_model, 3, self.num_heads, self.head_dim)
    self.w_qkv = nnx.Param(
      _glorot(0, (2, 3), (1,))(rngs.params(), shape, param_dtype),
      **logical_axes('embed', None, 'heads', 'kv'),
    )
    self.cache_index: Cache | None = nnx.data(None)

  def init_cache(self, batch_size: int, max_length: int) -> None:
    """Empty buffers: keys `[batch, heads, head_dim, max_length]`, values
    `[batch, heads, max_length, head_dim]`, and the index of the next free slot."""
    h, d_k = self.num_heads, self.head_dim
    self.cached_key = SelfCache(jnp.zeros((batch_size, h, d_k, max_length), self.dtype))
    self.cached_value = SelfCache(jnp.zeros((batch_size, h, max_length, d_k), self.dtype))
    self.cache_index = SelfCache(jnp.array(0, jnp.int32))

  def grow_cache(self, max_length: int) -> None:
    """Makes room for `max_length` keys/values in all: the slots written so far stay, the new
    ones are empty (decoding attends to, and beam search reorders, only the slots it has)."""
    added = max_length - self.cached_value.shape[2]
    if added > 0:
      self.cached_key = SelfCache(jnp.pad(self.cached_key[...], ((0, 0),) * 3 + ((0, added),)))
      self.cached_value = SelfCache(
        jnp.pad(self.cached_value[...], ((0, 0), (0, 0), (0, added), (0, 0)))
      )

  def _extend_cache(
    self, key: jax.Array, value: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Writes `[b, l, h, d_k]` new keys/values at the cache index; returns the whole buffers and
    the causal bias `[1, 1, l, max_length]` that hides the slots not written yet."""
    if self.cache_index is None:
      raise ValueError('use_cache=True needs init_cache(batch_size, max_length) first')
    index = self.cache_index[...]
    step_length = key.shape[1]
    max_length = self.cached_value.shape[2]
    cached_key = jax.lax.dynamic_update_slice(
      self.cached_key[...], _keys_to_cache(key.astype(self.dtype)), (0, 0, 0, index)
    )
    cached_value = jax.lax.dynamic_update_slice(
      self.cached_value[...], _values_to_cache(value.astype(self.dtype)), (0, 0, index, 0)
    )
    self.cached_key[...] = cached_key
    self.cached_value[...] = cached_value
    self.cache_index[...] = index + step_length
    query_positions = index + jnp.arange(step_length)
    allowed = jnp.arange(max_length)[None, :] <= query_positions[:, None]
    bias = masks.mask_to_bias(allowed[None, None])
    return _keys_from_cache(cached_key), _values_from_cache(cached_value), bias

  def __call__(
    self, x: jax.Array, bias: jax.Array | None = None, *, use_cache: bool = False
  ) -> jax.Array:
    """Args:
      x: `[batch, length, d_model]`.
      bias: additive mask bias `[batch | 1, 1, length, length]` (see `transformer.model.masks`). When
        decoding, the causal bias over the cache is built here; a given `bias` must then be
        `[..., length, max_length]` and is added to it.
      use_cache: append to the cache and attend to it (`init_cache` first).

    Returns:
      `[batch, length, d_model]`.
    """
    qkv = self._project(x, self.w_qkv)
    query = qkv[:, :, 0] + self._bias('b_q')
    key, value = qkv[:, :, 1], qkv[:, :, 2] + self._bias('b_v')
    if use_cache:
      key, value, cache_bias = self._extend_cache(key, value)
      bias = cache_bias if bias is None else cache_bias + bias
    return self._attend(query, key, value, bias)


class CrossAttention(_MultiHeadAttention):
  """Multi-head encoder-decoder attention: queries from the decoder (`w_q` `[d_model, heads,
  head_dim]`), keys and values from the encoder output C (`w_kv` `[d_model, 2, heads, head_dim]`).

  Decoding: `init_cache(encoded)` projects C to keys/values once per sentence instead of once per
  generated token; calls with `use_cache=True` read them.
  """

  def _init_own(self, rngs: nnx.Rngs, param_dtype) -> None:
    h, d_k = self.num_heads, self.head_dim
    self.w_q = nnx.Param(
      _glorot(0, (1, 2))(rngs.params(), (self.d_model, h, d_k), param_dtype),
      **logical_axes('embed', 'heads', 'kv'),
    )
    self.w_kv = nnx.Param(
      _glorot(0, (2, 3), (1,))(rngs.params(), (self.d_model, 2, h, d_k), param_dtype),
      **logical_axes('embed', None, 'heads', 'kv'),
    )

  def project_kv(self, encoded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values of C: `[b, k, d_model]` -> 2 x `[b, k, heads, head_dim]`."""
    kv = self._project(encoded, self.w_kv)
    return kv[:, :, 0], kv[:, :, 1] + self._bias('b_v')

  def init_cache(self, encoded: jax.Array) -> None:
    """Projects the encoder output `[batch, src_length, d_model]` once for all decoding steps."""
    key, value = self.project_kv(encoded)
    # The barrier makes XLA store the transposed copies once, rather than move the transposes
    # into the decoding loop (where they would copy the keys and values at every step).
    key, value = jax.lax.optimization_barrier((_keys_to_cache(key), _values_to_cache(value)))
    self.cached_key = CrossCache(key)
    self.cached_value = CrossCache(value)

  def __call__(
    self,
    x: jax.Array,
    encoded: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    use_cache: bool = False,
  ) -> jax.Array:
    """Args:
      x: decoder states `[batch, tgt_length, d_model]` (the queries).
      encoded: the encoder output C `[batch, src_length, d_model]`; unused with `use_cache=True`.
      bias: additive mask bias `[batch | 1, 1, tgt_length, src_length]` (source padding).
      use_cache: read the keys/values projected by `init_cache`. `x` may then hold several
        rows (beams) per sentence of the cache, adjacent: `[sentences * beams, 1, d_model]`, with
        `bias` `[sentences, 1, 1, src_length]`.

    Returns:
      `[batch, tgt_length, d_model]`.
    """
    query = self._project(x, self.w_q) + self._bias('b_q')
    if use_cache:
      if self.cached_key is None:
        raise ValueError('use_cache=True needs init_cache(encoded) first')
      key = _keys_from_cache(self.cached_key[...])
      value = _values_from_cache(self.cached_value[...])
      sentences = key.shape[0]
      if query.shape[0] != sentences:
        # The beams of a sentence (adjacent rows) share its keys and values: they attend as the
        # queries of one row, which reads each sentence's keys and values once, not per beam.
        rows, length = query.shape[:2]
        beams = query.reshape(sentences, rows // sentences * length, *query.shape[2:])
        return self._attend(beams, key, value, bias).reshape(rows, length, -1)
    else:
      if encoded is None:
        raise ValueError('cross-attention needs the encoder output (encoded)')
      key, value = self.project_kv(encoded)
    return self._attend(query, key, value, bias)
