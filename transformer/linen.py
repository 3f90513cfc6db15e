"""The NNX Transformer as a Flax Linen module, through `flax.nnx.bridge`.

    from transformer.linen import Transformer
    model = Transformer(config)                       # a linen.Module
    variables = model.init(jax.random.key(0), src, decoder_input)
    logits = model.apply(variables, src, decoder_input)                      # no dropout
    logits = model.apply(variables, src, decoder_input, deterministic=False,
                         rngs={'dropout': key})                               # training
    tokens = model.apply(variables, src, beam_size=4, method='generate')      # translation

The parameters live in the Linen `params` collection under `transformer/...` with the same tree as
`nnx.state(nnx_model, nnx.Param)`. Each is boxed with its logical axis names (the bridge's
`NNXMeta`, a `linen.meta.AxisMetadata`, its `metadata['out_sharding']`; see
`transformer.parallel.sharding`), so weights move between the two with
`nnx.update(nnx_model, linen.meta.unbox(variables['params']['transformer']))`.
"""

from __future__ import annotations

from flax import linen, nnx
import jax

from transformer.model import encoder_decoder as nnx_model


class _BridgedTransformer(nnx_model.Transformer):
  """NNX Transformer built from the Rngs that the bridge derives from Linen's keys.

  Linen's `init(key, ...)` usually provides only a `params` key, so the dropout stream falls back
  to a key derived from it (used only by calls with `deterministic=False` during init).
  """

  def __init__(self, config: nnx_model.TransformerConfig, *, rngs: nnx.Rngs):
    params_key = rngs.params()
    dropout_key = rngs.dropout() if 'dropout' in rngs else jax.random.fold_in(params_key, 1)
    super().__init__(config, rngs=nnx.Rngs(params=params_key, dropout=dropout_key))


def _call(module: nnx_model.Transformer, *args, deterministic: bool, method: str, **kwargs):
  # The bridge rebuilds the NNX module on every apply, so switching it to eval mode here only
  # affects this call.
  if deterministic:
    module.eval()
  return getattr(module, method)(*args, **kwargs)


def _generate(module: nnx_model.Transformer, src_tokens: jax.Array, **options) -> jax.Array:
  from transformer.decoding import search  # the search runs on the NNX module the bridge rebuilt

  return search.generate(module, src_tokens, **options)


class Transformer(linen.Module):
  """Linen front of `transformer.model.encoder_decoder.Transformer`; see the module docstring for use."""

  config: nnx_model.TransformerConfig

  def setup(self):
    self.transformer = nnx.bridge.ToLinen(_BridgedTransformer, args=(self.config,))

  def __call__(
    self, src_tokens: jax.Array, decoder_input: jax.Array, *, deterministic: bool = True, **kwargs
  ) -> jax.Array:
    """`[batch, src_length]`, `[batch, tgt_length]` -> logits `[batch, tgt_length, vocab_size]`."""
    return self.transformer(
      src_tokens,
      decoder_input,
      nnx_method=_call,
      deterministic=deterministic,
      method='__call__',
      **kwargs,
    )

  def encode(self, src_tokens: jax.Array, *, deterministic: bool = True, **kwargs) -> jax.Array:
    """`[batch, src_length]` -> `[batch, src_length, d_model]`."""
    return self.transformer(
      src_tokens, nnx_method=_call, deterministic=deterministic, method='encode', **kwargs
    )

  def generate(self, src_tokens: jax.Array, **options) -> jax.Array:
    """Greedy or beam search (`transformer.decoding.search.generate`; `options` as there, e.g.
    `beam_size`, `length_penalty`, `max_new_tokens`): `[batch, src_length]` -> tokens `[batch, length]`."""
    return self.transformer(src_tokens, nnx_method=_generate, **options)
