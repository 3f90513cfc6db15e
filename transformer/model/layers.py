"""Embeddings, positional encodings and the position-wise feed-forward network (paper §3.3–3.5)."""

from __future__ import annotations

import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from transformer.model import precision
from transformer.parallel.sharding import logical_axes, partitioned


class Embed(nnx.Module):
  """Token embedding shared by source, target and the pre-softmax projection (paper §3.4).

  The table `[vocab_size, d_model]` is initialised with standard deviation d_model^-0.5, so the
  embedding scaled by √d_model (as in the paper) starts at unit variance, like the positional
  encoding it is added to. `scale=False` leaves the embedding unscaled.
  """

  def __init__(
    self,
    vocab_size: int,
    d_model: int,
    *,
    scale: bool = True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.d_model = d_model
    self.scale = math.sqrt(d_model) if scale else 1.0
    self.table = nnx.Embed(
      vocab_size,
      d_model,
      dtype=dtype,
      param_dtype=param_dtype,
      embedding_init=partitioned(nnx.initializers.normal(stddev=d_model**-0.5), 'vocab', 'embed'),
      rngs=rngs,
    )

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """`[batch, length]` int -> `[batch, length, d_model]`, multiplied by √d_model."""
    return self.table(tokens) * self.scale

  def attend(self, x: jax.Array) -> jax.Array:
    """Output projection with the same weights: `[batch, length, d_model]` -> float32 logits
    `[batch, length, vocab_size]`.

    In bfloat16 the products are summed in float32 and the logits stay float32: the loss, the
    argmax and beam scores read them, and rounding them to bfloat16 first would only lose digits.
    """
    dtype = self.table.dtype or self.table.param_dtype
    return precision.project(
      'bld,vd->blv', x, self.table.embedding[...], dtype, float32_result=True
    )


@functools.lru_cache(maxsize=16)
def sinusoidal_table(
  max_positions: int, d_model: int, layout: str = 'interleaved', offset: int = 0
) -> np.ndarray:
  """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...): `[max_positions, d_model]`.

  `layout='halves'` puts the same sines in the first half of the features and the cosines in the
  second (Marian's layout) instead of interleaving them. `layout='fairseq'` is fairseq's table
  (M2M100, NLLB): halves with the frequencies exp(-i · ln(10000) / (d_model/2 - 1)), computed in
  float32 as fairseq does. Row p holds position p + `offset` (fairseq starts at pad_id + 1).
  """
  if layout == 'fairseq':
    return _fairseq_sinusoids(max_positions, d_model, offset)
  position = np.arange(offset, offset + max_positions, dtype=np.float64)[:, None]
  angle = position / np.power(10000.0, np.arange(0, d_model, 2, dtype=np.float64) / d_model)
  sines, cosines = np.sin(angle), np.cos(angle)[:, : d_model // 2]
  if layout == 'halves':
    table = np.concatenate([sines, cosines], axis=1)
  elif layout == 'interleaved':
    table = np.zeros((max_positions, d_model), dtype=np.float64)
    table[:, 0::2], table[:, 1::2] = sines, cosines
  else:
    raise ValueError(f"layout must be 'interleaved', 'halves' or 'fairseq', got {layout!r}")
  return table.astype(np.float32)


def _fairseq_sinusoids(max_positions: int, d_model: int, offset: int) -> np.ndarray:
  """fairseq's `SinusoidalPositionalEmbedding` rows offset..offset+max_positions-1, float32."""
  half = d_model // 2
  step = np.float32(-math.log(10000) / (half - 1))
  frequencies = np.exp(np.arange(half, dtype=np.float32) * step)
  angle = np.arange(offset, offset + max_positions, dtype=np.float32)[:, None] * frequencies
  table = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)
  if d_model % 2:
    table = np.concatenate([table, np.zeros((max_positions, 1), np.float32)], axis=1)
  return table.astype(np.float32)


class PositionalEncoding(nnx.Module):
  """Adds position information to embeddings: fixed sinusoids (paper) or a learned table.

  Positions are given explicitly (`[batch, length]`) rather than assumed to be 0..L-1, because a
  packed row restarts them at every example and a decoding step sits at the cache index.
  """

  def __init__(
    self,
    max_positions: int,
    d_model: int,
    *,
    learned: bool = False,
    layout: str = 'interleaved',
    offset: int = 0,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.max_positions = max_positions
    self.d_model = d_model
    self.layout = layout  # of the sinusoids (see sinusoidal_table)
    self.offset = offset  # the sinusoid of position p is that of p + offset
    if learned:
      self.table = nnx.Param(
        nnx.initializers.normal(stddev=0.02)(rngs.params(), (max_positions, d_model), param_dtype),
        **logical_axes('positions', 'embed'),
      )
    else:
      # The sinusoids are a constant of the traced program, not state: no gradient, no checkpoint.
      self.table = nnx.data(None)

  def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    """`x` `[batch, length, d_model]`, `positions` `[batch, length]` int (default 0..length-1)."""
    length = x.shape[1]
    if self.table is None:
      table = jnp.asarray(
        sinusoidal_table(self.max_positions, self.d_model, self.layout, self.offset)
      )
    else:
      table = self.table[...]
    if positions is None:
      if length > self.max_positions:
        raise ValueError(f'sequence length {length} exceeds max_positions={self.max_positions}')
      encoding = table[None, :length]
    else:
      encoding = jnp.take(table, positions, axis=0)
    return x + encoding.astype(x.dtype)


class FeedForward(nnx.Module):
  """FFN(x) = max(0, x W₁ + b₁) W₂ + b₂, applied at every position (paper eq. 2).

  `activation` replaces the ReLU (max(0, ·)) where a pretrained model used another (swish, gelu).
  """

  def __init__(
    self,
    d_model: int,
    d_ff: int,
    *,
    dropout_rate: float = 0.0,
    activation=jax.nn.relu,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    init = nnx.initializers.xavier_uniform()
    self.dtype = dtype
    self.activation = activation
    # nnx.Linear holds the parameters (kernel [in, out], bias [out]); the matmuls go through
    # precision.project, which is what makes bfloat16 fast on CPU.
    linear = lambda d_in, d_out, axes: nnx.Linear(
      d_in,
      d_out,
      kernel_init=partitioned(init, *axes),
      bias_init=partitioned(nnx.initializers.zeros_init(), axes[1]),
      param_dtype=param_dtype,
      rngs=rngs,
    )
    self.w_1 = linear(d_model, d_ff, ('embed', 'mlp'))
    self.w_2 = linear(d_ff, d_model, ('mlp', 'embed'))
    # Dropout on the hidden ReLU activations, as in tensor2tensor's "relu_dropout" (0 in the paper).
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[batch, length, d_model]` -> `[batch, length, d_model]`."""
    hidden = self.activation(self._linear(self.w_1, x))
    return self._linear(self.w_2, self.dropout(hidden))

  def _linear(self, layer: nnx.Linear, x: jax.Array) -> jax.Array:
    """x W + b: `[batch, length, d_in]` -> `[batch, length, d_out]` in the compute dtype."""
    bias = layer.bias[...].astype(self.dtype)
    return precision.project('bli,io->blo', x, layer.kernel[...], self.dtype) + bias
