from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import CrossAttention, SelfAttention, dot_product_attention
from transformer.model import masks


def numpy_attention(q, k, v, bias):
  """softmax(Q Kᵀ/√d_k + bias) V, per batch and head, in float64 NumPy."""
  q, k, v, bias = (np.asarray(a, np.float64) for a in (q, k, v, bias))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1]) + bias
  logits -= logits.max(-1, keepdims=True)
  weights = np.exp(logits)
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', weights, v)


def random_qkv(seed=0, b=2, q=5, k=7, h=3, d=8):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (
    jax.random.normal(keys[0], (b, q, h, d)),
    jax.random.normal(keys[1], (b, k, h, d)),
    jax.random.normal(keys[2], (b, k, h, d)),
  )


def padding_bias(b=2, q=5, k=7):
  key_valid = jnp.arange(k)[None, :] < jnp.array([[7], [4]])
  query_valid = jnp.ones((b, q), bool)
  return masks.mask_to_bias(masks.padding_mask(query_valid, key_valid))


def test_reference_attention_equals_numpy_formula():
  q, k, v = random_qkv()
  bias = padding_bias()
  out = dot_product_attention(q, k, v, bias)
  np.testing.assert_allclose(out, numpy_attention(q, k, v, bias), atol=1e-5)


def test_masked_keys_get_no_weight():
  q, k, v = random_qkv()
  bias = padding_bias()
  out = dot_product_attention(q, k, v, bias)
  # Changing the values at masked key positions (4.. of example 1) must not change the output.
  v2 = v.at[1, 4:].set(100.0)
  np.testing.assert_allclose(out, dot_product_attention(q, k, v2, bias), atol=1e-6)


@pytest.mark.parametrize('implementation', ['xla'])
def test_reference_equals_jax_nn_dot_product_attention(implementation):
  q, k, v = random_qkv(seed=1)
  bias = padding_bias()
  np.testing.assert_allclose(
    dot_product_attention(q, k, v, bias),
    dot_product_attention(q, k, v, bias, implementation=implementation),
    atol=1e-5,
  )


def test_fully_padded_row_is_finite():
  q, k, v = random_qkv(seed=2)
  bias = masks.mask_to_bias(jnp.zeros((2, 1, 5, 7), bool))
  for implementation in ('reference', 'xla'):
    out = dot_product_attention(q, k, v, bias, implementation=implementation)
    assert np.isfinite(np.asarray(out)).all(), implementation


def test_unknown_implementation_is_rejected():
  q, k, v = random_qkv()
  with pytest.raises(ValueError, match='unknown attention implementation'):
    dot_product_attention(q, k, v, implementation='flash9000')


@pytest.mark.parametrize('self_attention', [True, False])
def test_multi_head_equals_per_head_then_concat_and_project(self_attention):
  d_model, h = 12, 3
  d_k = d_model // h
  mha = (SelfAttention if self_attention else CrossAttention)(d_model, h, rngs=nnx.Rngs(0))
  # Non-zero biases so that they are checked too.
  for name in ('b_q', 'b_v', 'b_o'):
    p = getattr(mha, name)
    p[...] = jax.random.normal(jax.random.key(len(name) + ord(name[-1])), p.shape)
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, d_model)), np.float64)
  mem = (
    x
    if self_attention
    else np.asarray(jax.random.normal(jax.random.key(2), (2, 6, d_model)), np.float64)
  )
  if self_attention:
    w = np.asarray(mha.w_qkv[...], np.float64)
    wq, wk, wv = w[:, 0], w[:, 1], w[:, 2]
  else:
    wkv = np.asarray(mha.w_kv[...], np.float64)
    wq, wk, wv = np.asarray(mha.w_q[...], np.float64), wkv[:, 0], wkv[:, 1]
  bq, bv = np.asarray(mha.b_q[...], np.float64), np.asarray(mha.b_v[...], np.float64)
  bk = np.zeros_like(bq)  # keys have no bias (the softmax would cancel it)
  heads = []
  for i in range(h):  # head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V), one head at a time
    qi = x @ wq[:, i] + bq[i]
    ki = mem @ wk[:, i] + bk[i]
    vi = mem @ wv[:, i] + bv[i]
    s = qi @ ki.transpose(0, 2, 1) / np.sqrt(d_k)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    heads.append(s @ vi)
  w_o = np.asarray(mha.w_o[...], np.float64).reshape(d_model, d_model)  # [h*d_k, d_model]
  expected = np.concatenate(heads, -1) @ w_o + np.asarray(mha.b_o[...])
  if self_attention:
    out = mha(jnp.asarray(x, jnp.float32))
  else:
    out = mha(jnp.asarray(x, jnp.float32), jnp.asarray(mem, jnp.float32))
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_decode_without_cache_is_a_clear_error():
  with pytest.raises(ValueError, match='init_cache'):
    SelfAttention(8, 2, rngs=nnx.Rngs(0))(jnp.ones((1, 1, 8)), use_cache=True)
  with pytest.raises(ValueError, match='init_cache'):
    CrossAttention(8, 2, rngs=nnx.Rngs(0))(jnp.ones((1, 1, 8)), use_cache=True)


def test_self_and_cross_attention_have_their_own_parameters_and_caches():
  self_attention, cross = (
    SelfAttention(8, 2, rngs=nnx.Rngs(0)),
    CrossAttention(8, 2, rngs=nnx.Rngs(0)),
  )
  params = lambda m: set(nnx.state(m, nnx.Param).keys())
  assert params(self_attention) == {'w_qkv', 'b_q', 'b_v', 'w_o', 'b_o'}
  assert params(cross) == {'w_q', 'w_kv', 'b_q', 'b_v', 'w_o', 'b_o'}
  self_attention.init_cache(batch_size=2, max_length=5)
  assert (
    self_attention.cached_key.shape == (2, 2, 4, 5) and int(self_attention.cache_index[...]) == 0
  )
  encoded = jnp.ones((2, 3, 8))
  cross.init_cache(encoded)
  assert cross.cached_key.shape == (2, 2, 4, 3)
  # The cross cache holds the keys/values of the encoder output: decoding from it equals the
  # full call with the encoder output.
  x = jax.random.normal(jax.random.key(4), (2, 1, 8))
  np.testing.assert_allclose(cross(x, use_cache=True), cross(x, encoded), atol=1e-6)
