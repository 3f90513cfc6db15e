"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017), in Flax NNX.

Shapes: batch `b`, source length `s`, target length `t`, model width `d_model`.

    Transformer
      embed       shared Embed: source tokens, target tokens and the output projection
      encoder     N x EncoderBlock(self-attention, feed-forward), each wrapped in Add & Norm
      decoder     N x DecoderBlock(masked self-attention, cross-attention, feed-forward)

Every decoder layer attends to the same encoder output (the last encoder layer's).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from transformer.input_pipeline import special_ids
from transformer.model import masks, scanned
from transformer.model.attention import IMPLEMENTATIONS, CrossAttention, SelfAttention
from transformer.model.layers import Embed, FeedForward, PositionalEncoding
from transformer.parallel.sharding import logical_axes

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


ACTIVATIONS = {
  'relu': jax.nn.relu,
  'swish': jax.nn.swish,
  'gelu': functools.partial(jax.nn.gelu, approximate=False),
}
# What the backward pass keeps of a layer's forward pass (TransformerConfig.remat).
REMAT_POLICIES = {
  'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  'full': jax.checkpoint_policies.nothing_saveable,
}
_CHOICES = {
  'positional_encoding': ('sinusoidal', 'learned'),
  'sinusoid_layout': ('interleaved', 'halves', 'fairseq'),
  'norm_position': ('post', 'pre'),
  'attention_implementation': IMPLEMENTATIONS,
  'activation': tuple(ACTIVATIONS),
  'dtype': tuple(_DTYPES),
  'param_dtype': tuple(_DTYPES),
  'remat': ('none', 'minimal', 'full'),
}
_POSITIVE = (
  'vocab_size',
  'd_model',
  'num_heads',
  'd_ff',
  'num_encoder_layers',
  'num_decoder_layers',
  'max_positions',
)
_RATES = ('dropout_rate', 'attention_dropout_rate', 'relu_dropout_rate')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of the model; validated on construction (a bad value raises ValueError).

  `dtype` is the compute dtype (float32 or bfloat16); parameters are stored in `param_dtype`.
  Token ids: `pad_id` marks padding everywhere; the decoder input starts with `bos_id` (which
  may equal `pad_id`, as in Marian); sequences end with `eos_id`.

  The fields after `eos_id` describe variants of the architecture that pretrained models use
  (`transformer.pretrained.marian` sets them); their defaults are the paper's.
  """

  vocab_size: int = 32000
  d_model: int = 512
  num_heads: int = 8
  d_ff: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dropout_rate: float = 0.1  # P_drop: sublayer outputs and embedding sums
  attention_dropout_rate: float = 0.0  # on attention weights (not in the paper)
  relu_dropout_rate: float = 0.0  # on the FFN hidden layer (not in the paper)
  max_positions: int = 256  # positions the positional encoding covers (per side)
  positional_encoding: str = 'sinusoidal'  # 'sinusoidal' (paper) or 'learned'
  norm_position: str = 'post'  # 'post': LayerNorm(x + Sublayer(x)) (paper); 'pre'
  attention_implementation: str = 'reference'  # 'reference' | 'xla' | 'cudnn'
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  pad_id: int = special_ids.PAD_ID
  bos_id: int = special_ids.BOS_ID
  eos_id: int = special_ids.EOS_ID
  activation: str = 'relu'  # of the FFN: 'relu' (paper) | 'swish' | 'gelu'
  scale_embedding: bool = True  # embeddings × √d_model (paper)
  sinusoid_layout: str = (
    'interleaved'  # sin/cos on even/odd features (paper) | 'halves' | 'fairseq'
  )
  position_offset: int = 0  # the sinusoid of position p is that of p + offset (fairseq: pad + 1)
  layer_norm_epsilon: float = 1e-6
  logits_bias: bool = False  # a learned bias added to the output logits
  share_embeddings: bool = True  # one table for source, target and output (paper)
  target_vocab_size: int | None = None  # the target side's vocabulary when not shared
  # False removes the decoder's causal mask: a model that can read the future while training and
  # then cannot translate (what notebooks/teacher_forcing.ipynb shows). Never for real use.
  decoder_causal_mask: bool = True
  # Activations the backward pass recomputes instead of keeping (`REMAT_POLICIES`): 'none'
  # keeps all; 'minimal' keeps the matmul outputs of each layer; 'full' keeps only each layer's
  # input. Less memory for one more forward pass's work.
  remat: str = 'none'
  # Each stack's layers as one block with stacked parameters, run by nnx.scan: compile time
  # that does not grow with depth (transformer/model/scanned.py; decoding uses `scanned.unrolled`).
  scan_layers: bool = False

  def __post_init__(self):
    for name in _POSITIVE:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f'TransformerConfig.{name} must be a positive integer, got {value!r}')
    if self.d_model % self.num_heads:
      raise ValueError(
        f'TransformerConfig.d_model={self.d_model} must be divisible by num_heads={self.num_heads}'
      )
    for name in _RATES:
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'TransformerConfig.{name} must be in [0, 1), got {getattr(self, name)!r}')
    for name, allowed in _CHOICES.items():
      if getattr(self, name) not in allowed:
        raise ValueError(
          f'TransformerConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}'
        )
    self._check_implementation()
    self._check_ids()

  def _check_implementation(self) -> None:
    if self.attention_implementation == 'cudnn' and self.dtype not in ('bfloat16', 'float16'):
      raise ValueError(
        "attention_implementation='cudnn' needs dtype='bfloat16' or 'float16' (cuDNN's fused "
        f"attention has no {self.dtype} kernel); use 'xla' or 'reference' for {self.dtype}"
      )
    if self.attention_implementation != 'reference' and self.attention_dropout_rate > 0:
      raise ValueError(
        'attention_dropout_rate > 0 needs attention_implementation="reference" '
        '(jax.nn.dot_product_attention has no dropout)'
      )

  def _check_ids(self) -> None:
    if self.target_vocab_size is not None and self.share_embeddings:
      raise ValueError('TransformerConfig.target_vocab_size needs share_embeddings=False')
    ids = {'pad_id': self.pad_id, 'bos_id': self.bos_id, 'eos_id': self.eos_id}
    for name, value in ids.items():
      if not 0 <= value < min(self.vocab_size, self.target_vocabulary):
        raise ValueError(
          f'TransformerConfig.{name}={value} is outside the vocabulary [0, {self.vocab_size})'
        )
    if self.eos_id == self.pad_id:
      raise ValueError(f'eos_id must differ from pad_id, got {ids}')
    if self.position_offset < 0:
      raise ValueError(
        f'TransformerConfig.position_offset must be >= 0, got {self.position_offset}'
      )

  @property
  def target_vocabulary(self) -> int:
    """Size of the target side's vocabulary (the logits' last axis)."""
    return self.target_vocab_size or self.vocab_size

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def parameter_dtype(self):
    return _DTYPES[self.param_dtype]

  @classmethod
  def base(cls, **overrides) -> 'TransformerConfig':
    """Transformer (base) of the paper's Table 3: N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1."""
    return cls(**{'vocab_size': 37000, **overrides})

  @classmethod
  def big(cls, **overrides) -> 'TransformerConfig':
    """Transformer (big): N=6, d_model=1024, d_ff=4096, h=16, P_drop=0.3."""
    return cls(
      **{
        'vocab_size': 37000,
        'd_model': 1024,
        'd_ff': 4096,
        'num_heads': 16,
        'dropout_rate': 0.3,
        **overrides,
      }
    )

  def replace(self, **changes) -> 'TransformerConfig':
    return dataclasses.replace(self, **changes)


class AddNorm(nnx.Module):
  """Residual connection and layer normalisation around a sublayer.

  post-LN (paper): LayerNorm(x + Dropout(Sublayer(x)));
  pre-LN:          x + Dropout(Sublayer(LayerNorm(x))) (trains deep stacks without warm-up).
  """

  def __init__(
    self,
    d_model: int,
    *,
    pre_norm: bool,
    dropout_rate: float,
    dtype,
    param_dtype,
    epsilon: float = 1e-6,
    rngs: nnx.Rngs,
  ):
    self.pre_norm = pre_norm
    self.norm = nnx.LayerNorm(
      d_model, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs
    )
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x: jax.Array, sublayer: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """`x` `[batch, length, d_model]` -> same shape."""
    if self.pre_norm:
      return x + self.dropout(sublayer(self.norm(x)))
    return self.norm(x + self.dropout(sublayer(x)))


def _add_norm(config: TransformerConfig, rngs: nnx.Rngs) -> AddNorm:
  return AddNorm(
    config.d_model,
    pre_norm=config.norm_position == 'pre',
    dropout_rate=config.dropout_rate,
    dtype=config.compute_dtype,
    param_dtype=config.parameter_dtype,
    epsilon=config.layer_norm_epsilon,
    rngs=rngs,
  )


def _attention(kind: type, config: TransformerConfig, rngs: nnx.Rngs):
  return kind(
    config.d_model,
    config.num_heads,
    dropout_rate=config.attention_dropout_rate,
    implementation=config.attention_implementation,
    dtype=config.compute_dtype,
    param_dtype=config.parameter_dtype,
    rngs=rngs,
  )


def _feed_forward(config: TransformerConfig, rngs: nnx.Rngs) -> FeedForward:
  return FeedForward(
    config.d_model,
    config.d_ff,
    dropout_rate=config.relu_dropout_rate,
    activation=ACTIVATIONS[config.activation],
    dtype=config.compute_dtype,
    param_dtype=config.parameter_dtype,
    rngs=rngs,
  )


class EncoderBlock(nnx.Module):
  """One encoder layer: self-attention, then the feed-forward network, each with Add & Norm."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.self_attention = _attention(SelfAttention, config, rngs)
    self.self_attention_norm = _add_norm(config, rngs)
    self.feed_forward = _feed_forward(config, rngs)
    self.feed_forward_norm = _add_norm(config, rngs)

  def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
    """`x` `[batch, src_length, d_model]`, `bias` `[batch, 1, src_length, src_length]`."""
    x = self.self_attention_norm(x, lambda y: self.self_attention(y, bias=bias))
    return self.feed_forward_norm(x, self.feed_forward)


class DecoderBlock(nnx.Module):
  """One decoder layer: masked self-attention, cross-attention over the encoder output, FFN.

  With `cross_attention=False` the block has no encoder-decoder attention, so a stack of these is
  a decoder-only (GPT-style) language model.
  """

  def __init__(self, config: TransformerConfig, *, cross_attention: bool = True, rngs: nnx.Rngs):
    self.self_attention = _attention(SelfAttention, config, rngs)
    self.self_attention_norm = _add_norm(config, rngs)
    if cross_attention:
      self.cross_attention = _attention(CrossAttention, config, rngs)
      self.cross_attention_norm = _add_norm(config, rngs)
    else:
      self.cross_attention = nnx.data(None)
      self.cross_attention_norm = nnx.data(None)
    self.feed_forward = _feed_forward(config, rngs)
    self.feed_forward_norm = _add_norm(config, rngs)

  def __call__(
    self,
    x: jax.Array,
    encoded: jax.Array | None = None,
    self_bias: jax.Array | None = None,
    cross_bias: jax.Array | None = None,
    *,
    use_cache: bool = False,
  ) -> jax.Array:
    """Args:
    x: `[batch, tgt_length, d_model]` (`tgt_length` = 1 when decoding token by token).
    encoded: `[batch, src_length, d_model]` encoder output (unused when decoding from the cache).
    self_bias: `[batch, 1, tgt_length, tgt_length]` causal ∧ padding bias (built from the cache
      when decoding).
    cross_bias: `[batch, 1, tgt_length, src_length]` source padding bias.
    use_cache: read/extend the KV caches (see `Transformer.init_cache`).
    """
    x = self.self_attention_norm(
      x, lambda y: self.self_attention(y, bias=self_bias, use_cache=use_cache)
    )
    if self.cross_attention is not None:
      x = self.cross_attention_norm(
        x, lambda y: self.cross_attention(y, encoded, bias=cross_bias, use_cache=use_cache)
      )
    return self.feed_forward_norm(x, self.feed_forward)


def _unrolled_only(scan_layers: bool) -> None:
  if scan_layers:
    raise ValueError(
      'token-by-token decoding needs one block per layer: decode with '
      'transformer.model.scanned.unrolled(model) (a model with scan_layers=True trains scanned)'
    )


class _Stack(nnx.Module):
  """Positional encoding + dropout on the embedded input, then the layers (and, for pre-LN, a final norm)."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.positional_encoding = PositionalEncoding(
      config.max_positions,
      config.d_model,
      learned=config.positional_encoding == 'learned',
      layout=config.sinusoid_layout,
      offset=config.position_offset,
      param_dtype=config.parameter_dtype,
      rngs=rngs,
    )
    self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)
    self.remat = config.remat
    self.scan_layers = config.scan_layers
    if config.norm_position == 'pre':
      self.final_norm = nnx.LayerNorm(
        config.d_model,
        epsilon=config.layer_norm_epsilon,
        dtype=config.compute_dtype,
        param_dtype=config.parameter_dtype,
        rngs=rngs,
      )
    else:
      self.final_norm = nnx.data(None)

  def _blocks(self, block_class: type, config: TransformerConfig, count: int, rngs: nnx.Rngs):
    """The stack's layers: a list, or one block of stacked layers (`scan_layers`)."""
    if self.scan_layers:
      return scanned.stacked_blocks(block_class, config, count, rngs)
    return nnx.List([block_class(config, rngs=rngs) for _ in range(count)])

  def _run_layers(self, x: jax.Array, *args: Any) -> jax.Array:
    """`x` through every layer (`layer(x, *args)`), scanned or in a loop, each under `nnx.remat`
    with the config's policy unless it is 'none'."""
    remat = self.remat

    def call(layer: nnx.Module, x: jax.Array, *args: Any) -> jax.Array:
      if remat == 'none':
        return layer(x, *args)
      apply = lambda module, *inputs: module(*inputs)
      return nnx.remat(apply, policy=REMAT_POLICIES[remat])(layer, x, *args)

    if self.scan_layers:
      return scanned.run(self.layers, x, call, *args)
    for layer in self.layers:
      x = call(layer, x, *args)
    return x

  def _inputs(self, embedded: jax.Array, positions: jax.Array | None) -> jax.Array:
    return self.dropout(self.positional_encoding(embedded, positions))

  def _output(self, x: jax.Array) -> jax.Array:
    return x if self.final_norm is None else self.final_norm(x)


class Encoder(_Stack):
  """N encoder layers over embedded source tokens."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.layers = self._blocks(EncoderBlock, config, config.num_encoder_layers, rngs)

  def __call__(
    self, embedded: jax.Array, bias: jax.Array | None = None, positions: jax.Array | None = None
  ) -> jax.Array:
    """`embedded` `[batch, src_length, d_model]` -> encoder output `[batch, src_length, d_model]`."""
    x = self._inputs(embedded, positions)
    return self._output(self._run_layers(x, bias))


class Decoder(_Stack):
  """N decoder layers; every layer attends to the same encoder output."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.layers = self._blocks(DecoderBlock, config, config.num_decoder_layers, rngs)

  def __call__(
    self,
    embedded: jax.Array,
    encoded: jax.Array | None,
    self_bias: jax.Array | None = None,
    cross_bias: jax.Array | None = None,
    positions: jax.Array | None = None,
    *,
    use_cache: bool = False,
  ) -> jax.Array:
    """`embedded` `[batch, tgt_length, d_model]` -> `[batch, tgt_length, d_model]`."""
    x = self._inputs(embedded, positions)
    if not use_cache:
      return self._output(self._run_layers(x, encoded, self_bias, cross_bias))
    _unrolled_only(self.scan_layers)
    for layer in self.layers:  # decoding: one token, no backward pass to save memory for
      x = layer(x, encoded, self_bias, cross_bias, use_cache=True)
    return self._output(x)


class Transformer(nnx.Module):
  """Encoder-decoder Transformer with a shared source/target embedding tied to the output layer.

  `__call__` is the teacher-forcing pass used in training: the whole shifted-right target in one
  masked forward pass. `encode` + `init_cache` + `decode(..., use_cache=True)` is the token-by-token
  path used for generation; both give the same logits.

  With `share_embeddings=False` the target side has its own table (`target_embed`), which also
  projects the output; with `logits_bias` a learned `[target vocabulary]` bias is added to the
  logits.
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    embed = lambda vocab: Embed(
      vocab,
      config.d_model,
      scale=config.scale_embedding,
      dtype=config.compute_dtype,
      param_dtype=config.parameter_dtype,
      rngs=rngs,
    )
    self.embed = embed(config.vocab_size)
    self.target_embed = (
      nnx.data(None) if config.share_embeddings else embed(config.target_vocabulary)
    )
    self.encoder = Encoder(config, rngs=rngs)
    self.decoder = Decoder(config, rngs=rngs)
    if config.logits_bias:
      self.logits_bias = nnx.Param(
        jnp.zeros((config.target_vocabulary,), config.parameter_dtype), **logical_axes('vocab')
      )
    else:
      self.logits_bias = nnx.data(None)

  @property
  def target_embedding(self) -> Embed:
    """The table of the decoder's input and of the output projection."""
    return self.embed if self.target_embed is None else self.target_embed

  def _source_mask(self, src_tokens: jax.Array, query_length: int) -> jax.Array:
    """`[batch, 1, query_length, src_length]`: every query may see the non-padding source keys.

    Only keys are masked: padded query positions still attend to real tokens, so every output,
    padded or not, stays finite and depends only on real tokens."""
    key_valid = src_tokens != self.config.pad_id
    query_valid = jnp.ones((src_tokens.shape[0], query_length), bool)
    return masks.padding_mask(query_valid, key_valid)

  def encode(
    self,
    src_tokens: jax.Array,
    src_segments: jax.Array | None = None,
    src_positions: jax.Array | None = None,
  ) -> jax.Array:
    """`src_tokens` `[batch, src_length]` int -> encoder output `[batch, src_length, d_model]`.

    Padding (`pad_id`) is masked out; with packed rows, `src_segments` keeps examples apart and
    `src_positions` restarts positions at each example.
    """
    mask = self._source_mask(src_tokens, src_tokens.shape[1])
    if src_segments is not None:
      mask = masks.combine(mask, masks.segment_mask(src_segments, src_segments))
    return self.encoder(self.embed(src_tokens), masks.mask_to_bias(mask), src_positions)

  def decode(
    self,
    decoder_input: jax.Array,
    encoded: jax.Array,
    src_tokens: jax.Array,
    *,
    src_segments: jax.Array | None = None,
    tgt_segments: jax.Array | None = None,
    tgt_positions: jax.Array | None = None,
    use_cache: bool = False,
  ) -> jax.Array:
    """Logits for the next token at every target position.

    Args:
      decoder_input: `[batch, tgt_length]` int: the target shifted right (starts with `bos_id`).
      encoded: `[batch, src_length, d_model]` from `encode`.
      src_tokens: `[batch, src_length]` int, for the source padding mask of cross-attention.
      src_segments, tgt_segments: `[batch, length]` segment ids of packed rows, or None.
      tgt_positions: `[batch, tgt_length]` positions (required when `use_cache=True`: the step index).
      use_cache: token-by-token generation with the KV cache (`init_cache` first).

    Returns:
      `[batch, tgt_length, vocab_size]` float32 logits.
    """
    cross_mask = self._source_mask(src_tokens, decoder_input.shape[1])
    if use_cache:
      if tgt_positions is None:
        raise ValueError('use_cache=True needs tgt_positions (the index of the token being fed)')
      self_mask = None  # the self-attention cache builds its own causal mask
    else:
      # Targets are right-padded, so the causal mask already hides padded keys from every real
      # query. The decoder input is never compared with pad_id: a model whose decoder starts with
      # the pad token (Marian) must not mask its own first position.
      self_mask = (
        masks.causal_mask(decoder_input.shape[1]) if self.config.decoder_causal_mask else None
      )
    if tgt_segments is not None:
      self_mask = masks.combine(self_mask, masks.segment_mask(tgt_segments, tgt_segments))
      cross_mask = masks.combine(cross_mask, masks.segment_mask(tgt_segments, src_segments))
    x = self.decoder(
      self.target_embedding(decoder_input),
      encoded,
      masks.mask_to_bias(self_mask),
      masks.mask_to_bias(cross_mask),
      tgt_positions,
      use_cache=use_cache,
    )
    logits = self.target_embedding.attend(x)
    return (
      logits if self.logits_bias is None else logits + self.logits_bias[...].astype(jnp.float32)
    )

  def __call__(
    self,
    src_tokens: jax.Array,
    decoder_input: jax.Array,
    *,
    src_segments: jax.Array | None = None,
    tgt_segments: jax.Array | None = None,
    src_positions: jax.Array | None = None,
    tgt_positions: jax.Array | None = None,
  ) -> jax.Array:
    """Teacher forcing: `[batch, src_length]`, `[batch, tgt_length]` -> logits `[batch, tgt_length, vocab_size]`."""
    encoded = self.encode(src_tokens, src_segments, src_positions)
    return self.decode(
      decoder_input,
      encoded,
      src_tokens,
      src_segments=src_segments,
      tgt_segments=tgt_segments,
      tgt_positions=tgt_positions,
    )

  def init_cache(self, encoded: jax.Array, max_decode_length: int, beams: int = 1) -> None:
    """Prepares token-by-token decoding: empty self-attention caches of `max_decode_length`
    slots for `beams` rows per sentence and cross-attention keys/values projected once from
    `encoded` `[batch, src_length, d_model]` (shared by a sentence's beams)."""
    if max_decode_length > self.config.max_positions:
      raise ValueError(
        f'max_decode_length={max_decode_length} exceeds the positional encoding '
        f'length max_positions={self.config.max_positions}'
      )
    _unrolled_only(self.config.scan_layers)
    for layer in self.decoder.layers:
      layer.self_attention.init_cache(encoded.shape[0] * beams, max_decode_length)
      if layer.cross_attention is not None:
        layer.cross_attention.init_cache(encoded)


def shift_right(targets: jax.Array, bos_id: int, segment_ids: jax.Array | None = None) -> jax.Array:
  """Teacher forcing's decoder input: `[BOS] + target[:-1]` for every example of a row.

  Args:
    targets: `[batch, length]` int target tokens (right-padded).
    bos_id: the decoder's start token.
    segment_ids: `[batch, length]` int ids of packed examples (0 on padding), or None for one
      example per row. An example starts where the id changes: it gets BOS there, and padding
      stays as it is.

  Returns:
    `[batch, length]` int decoder input.
  """
  previous = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  if segment_ids is None:
    return previous.at[:, 0].set(bos_id)
  previous_segment = jnp.pad(segment_ids, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  shifted = jnp.where(segment_ids != previous_segment, bos_id, previous)
  return jnp.where(segment_ids > 0, shifted, targets)


def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (shared embeddings counted once)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract_model(config: TransformerConfig) -> tuple[nnx.GraphDef, Any, Any]:
  """(graphdef, parameter ShapeDtypeStructs, concrete non-parameter state) of a model, built
  without initialising any parameter."""
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  return graphdef, params, jax.tree.map(scanned.placeholder, rest)
