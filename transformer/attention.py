"""Scaled dot-product attention and multi-head attention (paper §3.2).

Shapes use: batch `b`, query length `q`, key/value length `k`, heads `h`, head size `d_k`.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from transformer import masks, precision

Implementation = Literal['reference', 'xla', 'cudnn']
IMPLEMENTATIONS = ('reference', 'xla', 'cudnn')


class Cache(nnx.Variable):
  """Decoding state (keys/values seen so far); kept apart from parameters."""


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
      a large negative number where masked; see `transformer.masks`), or None.
    dropout: applied to the attention weights (reference implementation only).
    implementation: 'reference' writes the formula out (readable, supports attention dropout);
      'xla' and 'cudnn' call `jax.nn.dot_product_attention` (cudnn: fused flash attention on GPU).

  Returns:
    `[batch, q_length, heads, head_dim]`.
  """
  if implementation != 'reference':
    if implementation not in IMPLEMENTATIONS:
      raise ValueError(f'unknown attention implementation {implementation!r}; '
                       f'choose one of {IMPLEMENTATIONS}')
    if bias is not None:
      bias = bias.astype(query.dtype)  # jax.nn.dot_product_attention wants the compute dtype
    return jax.nn.dot_product_attention(query, key, value, bias=bias,
                                        implementation=implementation)

  weights = attention_weights(query, key, bias).astype(value.dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, value)


def attention_weights(query: jax.Array, key: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """softmax(Q Kᵀ / √d_k + bias): `[batch, heads, q_length, kv_length]` float32 (rows sum to 1)."""
  d_k = query.shape[-1]
  # Logits and softmax in float32 even for bfloat16 inputs: exp() of bf16 logits loses too much.
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key,
                      preferred_element_type=jnp.float32) / math.sqrt(d_k)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  return jax.nn.softmax(logits, axis=-1)


# Decoding caches are stored in the layouts the attention contractions read, so that a step does
# not transpose (copy) every cache: keys `[batch, heads, head_dim, length]` (Kᵀ of Q·Kᵀ), values
# `[batch, heads, length, head_dim]`. Those copies were 60% of a cached greedy step on CPU.
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


class MultiHeadAttention(nnx.Module):
  """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

  Self-attention (`self_attention=True`) projects one input to queries, keys and values with one
  fused kernel `w_qkv` `[d_model, 3, heads, head_dim]` (one matmul instead of three). Cross-attention
  projects queries from the decoder (`w_q` `[d_model, heads, head_dim]`) and keys/values from the
  encoder output (`w_kv` `[d_model, 2, heads, head_dim]`). The output projection is
  `w_o` `[heads, head_dim, d_model]`, which is the concatenation of heads followed by W^O.

  Queries and values have biases (`b_q`, `b_v`); keys have none: a key bias adds the same q·b to
  every logit of a query, which the softmax cancels, so its gradient is zero up to rounding noise
  (which Adam would turn into lr-sized random steps).

  Decoding: `init_cache` (self-attention) allocates fixed-size key/value buffers so that a jitted
  loop feeds one token at a time; `init_cross_cache` (cross-attention) projects the encoder
  output to keys/values once per sentence instead of once per generated token. Caches are stored
  in the layouts the Q·Kᵀ and weights·V contractions read (see `_keys_to_cache`), so a step does
  not copy every cache.
  """

  def __init__(
      self,
      d_model: int,
      num_heads: int,
      *,
      self_attention: bool,
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
    self.self_attention = self_attention
    self.implementation = implementation
    self.dtype = dtype
    h, d_k = num_heads, self.head_dim
    # Glorot-uniform per projection: fan-in d_model, fan-out heads*head_dim = d_model.
    glorot = lambda in_axis, out_axis, batch_axis=(): nnx.initializers.variance_scaling(
        1.0, 'fan_avg', 'uniform', in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis)
    if self_attention:
      self.w_qkv = nnx.Param(glorot(0, (2, 3), (1,))(rngs.params(), (d_model, 3, h, d_k), param_dtype))
    else:
      self.w_q = nnx.Param(glorot(0, (1, 2))(rngs.params(), (d_model, h, d_k), param_dtype))
      self.w_kv = nnx.Param(glorot(0, (2, 3), (1,))(rngs.params(), (d_model, 2, h, d_k), param_dtype))
    self.b_q = nnx.Param(jnp.zeros((h, d_k), param_dtype))
    self.b_v = nnx.Param(jnp.zeros((h, d_k), param_dtype))
    self.w_o = nnx.Param(glorot((0, 1), 2)(rngs.params(), (h, d_k, d_model), param_dtype))
    self.b_o = nnx.Param(jnp.zeros((d_model,), param_dtype))
    self.attention_dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    # Set to True to keep the attention weights of each call as an nnx.Intermediate
    # ('attention_weights', [batch, heads, q_length, kv_length]), e.g. to plot them.
    self.sow_weights = False
    self.cached_key: Cache | None = nnx.data(None)
    self.cached_value: Cache | None = nnx.data(None)
    self.cache_index: Cache | None = nnx.data(None)

  def _project(self, x: jax.Array, kernel: nnx.Param) -> jax.Array:
    """`[b, l, d_model]` x kernel `[d_model, *out]` -> `[b, l, *out]` in the compute dtype."""
    return precision.project('bld,d...->bl...', x, kernel[...], self.dtype)

  def _bias(self, name: str) -> jax.Array:
    return getattr(self, name)[...].astype(self.dtype)

  def project_kv(self, inputs_kv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values of the encoder output: `[b, k, d_model]` -> 2 x `[b, k, heads, head_dim]`."""
    kv = self._project(inputs_kv, self.w_kv)
    return kv[:, :, 0], kv[:, :, 1] + self._bias('b_v')

  def init_cache(self, batch_size: int, max_length: int) -> None:
    """Allocates the self-attention cache: keys `[batch, heads, head_dim, max_length]`, values
    `[batch, heads, max_length, head_dim]`."""
    if not self.self_attention:
      raise ValueError('init_cache is for self-attention; use init_cross_cache for cross-attention')
    h, d_k = self.num_heads, self.head_dim
    self.cached_key = Cache(jnp.zeros((batch_size, h, d_k, max_length), self.dtype))
    self.cached_value = Cache(jnp.zeros((batch_size, h, max_length, d_k), self.dtype))
    self.cache_index = Cache(jnp.array(0, jnp.int32))

  def init_cross_cache(self, inputs_kv: jax.Array) -> None:
    """Projects the encoder output `[batch, src_length, d_model]` once for all decoding steps."""
    if self.self_attention:
      raise ValueError('init_cross_cache is for cross-attention; use init_cache for self-attention')
    key, value = self.project_kv(inputs_kv)
    # The barrier makes XLA store the transposed copies once, rather than move the transposes
    # into the decoding loop (where they would copy the keys and values at every step).
    key, value = jax.lax.optimization_barrier((_keys_to_cache(key), _values_to_cache(value)))
    self.cached_key = Cache(key)
    self.cached_value = Cache(value)

  def _extend_cache(self, key: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Writes `[b, l, h, d_k]` new keys/values at the cache index; returns the whole buffers and
    the causal bias `[1, 1, l, max_length]` that hides the not yet written slots."""
    if self.cache_index is None:
      raise ValueError('decode=True needs init_cache(batch_size, max_length) first')
    index = self.cache_index[...]
    step_length = key.shape[1]
    max_length = self.cached_value.shape[2]
    cached_key = jax.lax.dynamic_update_slice(
        self.cached_key[...], _keys_to_cache(key.astype(self.dtype)), (0, 0, 0, index))
    cached_value = jax.lax.dynamic_update_slice(
        self.cached_value[...], _values_to_cache(value.astype(self.dtype)), (0, 0, index, 0))
    self.cached_key[...] = cached_key
    self.cached_value[...] = cached_value
    self.cache_index[...] = index + step_length
    query_positions = index + jnp.arange(step_length)
    allowed = jnp.arange(max_length)[None, :] <= query_positions[:, None]
    return _keys_from_cache(cached_key), _values_from_cache(cached_value), masks.mask_to_bias(allowed[None, None])

  def __call__(
      self,
      inputs_q: jax.Array,
      inputs_kv: jax.Array | None = None,
      bias: jax.Array | None = None,
      *,
      decode: bool = False,
  ) -> jax.Array:
    """Attends from `inputs_q` to `inputs_kv` (self-attention: to `inputs_q` itself).

    Args:
      inputs_q: `[batch, q_length, d_model]`.
      inputs_kv: `[batch, kv_length, d_model]` for cross-attention; ignored for self-attention and
        when decoding with a cross cache.
      bias: additive mask bias `[batch | 1, 1, q_length, kv_length]` (see `transformer.masks`).
        When decoding self-attention, the causal bias over the cache is built here and `bias` is
        added to it only if given with `kv_length == max_length`.
      decode: use (and, for self-attention, extend) the cache instead of full-sequence keys.

    Returns:
      `[batch, q_length, d_model]`.
    """
    if self.self_attention:
      qkv = self._project(inputs_q, self.w_qkv)
      query, key, value = qkv[:, :, 0] + self._bias('b_q'), qkv[:, :, 1], qkv[:, :, 2] + self._bias('b_v')
      if decode:
        key, value, cache_bias = self._extend_cache(key, value)
        bias = cache_bias if bias is None else cache_bias + bias
    else:
      query = self._project(inputs_q, self.w_q) + self._bias('b_q')
      if decode:
        if self.cached_key is None:
          raise ValueError('decode=True needs init_cross_cache(encoded) first')
        key, value = _keys_from_cache(self.cached_key[...]), _values_from_cache(self.cached_value[...])
      else:
        if inputs_kv is None:
          raise ValueError('cross-attention needs inputs_kv (the encoder output)')
        key, value = self.project_kv(inputs_kv)
    if self.sow_weights:
      self.sow(nnx.Intermediate, 'attention_weights', attention_weights(query, key, bias))
    dropout = self.attention_dropout if self.attention_dropout.rate > 0 else None
    heads = dot_product_attention(query, key, value, bias, dropout=dropout,
                                  implementation=self.implementation)
    out = precision.project('bqhd,hdm->bqm', heads, self.w_o[...], self.dtype)
    return out + self.b_o[...].astype(self.dtype)
