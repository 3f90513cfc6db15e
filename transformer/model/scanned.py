"""Scanned layer stacks (`TransformerConfig.scan_layers=True`): a stack's N identical blocks held
as one block whose parameters have a leading `layers` axis `[N, ...]`, run with `nnx.scan`, so
tracing and compiling a train step costs one layer's work whatever the depth.

Training and the teacher-forced pass run scanned. Token-by-token decoding (with its KV caches),
the Hugging Face and CTranslate2 converters and attention capture use the unrolled layout:
`unrolled(model)` is the same model with its parameters sliced per layer, `scanned(model)` the way
back. A workdir's checkpoints are in the layout of its config; `workdir.load_model` returns the
unrolled model for decoding.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx
import jax
import numpy as np

SIDES = ('encoder', 'decoder')


def stacked_blocks(block_class: type, config: Any, count: int, rngs: nnx.Rngs) -> nnx.Module:
  """`count` blocks created as one, each parameter with a leading `layers` axis (its logical
  name too, for `transformer.parallel.sharding`), each block from its own split of `rngs`."""

  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
  def create(rngs: nnx.Rngs) -> nnx.Module:
    return block_class(config, rngs=rngs)

  return create(rngs)


def run(stack: nnx.Module, x: jax.Array, call: Callable[..., jax.Array], *shared: Any) -> jax.Array:
  """`x` `[batch, length, d_model]` through each block of `stack` in order:
  `x = call(block, x, *shared)`, `shared` (masks, the encoder output) the same for every block."""

  @nnx.scan(in_axes=(nnx.Carry, 0) + (None,) * len(shared), out_axes=nnx.Carry)
  def body(carry: jax.Array, block: nnx.Module, *shared: Any) -> jax.Array:
    return call(block, carry, *shared)

  return body(x, stack, *shared)


def convert_params(params: dict, to_scanned: bool) -> dict:
  """A pure parameter dict (`nnx.to_pure_dict`) with each stack's `layers` stacked `{0: .., 1:
  ..}` -> `[N, ...]` (`to_scanned`) or sliced back."""
  converted = dict(params)
  for side in SIDES:
    layers = params[side]['layers']
    if to_scanned:
      blocks = [layers[i] for i in sorted(layers, key=int)]
      joined = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)
    else:
      count = len(jax.tree.leaves(layers)[0])
      joined = {i: jax.tree.map(lambda x, i=i: np.asarray(x)[i], layers) for i in range(count)}
    converted[side] = {**params[side], 'layers': joined}
  return converted


def placeholder(x: jax.ShapeDtypeStruct) -> jax.Array:
  """A concrete value for an abstract non-parameter leaf: zeros, or PRNG keys of its shape (a
  scanned stack's dropout streams hold one key per layer)."""
  if not jax.numpy.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.numpy.zeros(x.shape, x.dtype)
  return jax.random.split(jax.random.key(0), x.shape) if x.shape else jax.random.key(0)


def _converted(model: Any, scan_layers: bool) -> Any:
  if model.config.scan_layers == scan_layers:
    return model
  config = model.config.replace(scan_layers=scan_layers)
  abstract = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  rest = jax.tree.map(placeholder, rest)
  values = convert_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)), scan_layers)
  nnx.replace_by_pure_dict(params, values)
  converted = nnx.merge(graphdef, params, rest)
  converted.eval()
  return converted


def unrolled(model: Any) -> Any:
  """`model` with one block per layer (eval mode): what decoding and the converters take."""
  return _converted(model, scan_layers=False)


def scanned(model: Any) -> Any:
  """`model` with its stacks' layers stacked (eval mode; `.train()` to train it)."""
  return _converted(model, scan_layers=True)
