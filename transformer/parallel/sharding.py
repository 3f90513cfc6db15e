"""A device mesh with named axes and the logical axis rules that place parameters, optimizer
state and batches on it, in the vocabulary of MaxText and t5x.

The mesh has three axes, over every device of every host:

    data    whole-model replicas, each with its own rows of the batch (data parallelism);
    fsdp    parameters, gradients and Adam moments split along their `embed` dimension (ZeRO-3,
            fully sharded data parallelism); the batch's rows are split over it too;
    tensor  attention heads, the FFN's inner dimension and the vocabulary split (Megatron-style
            tensor parallelism).

Each parameter names its dimensions where the model creates it (`logical_axes`, `partitioned`:
NNX's `out_sharding` metadata), e.g. `w_qkv` `[d_model, 3, heads, head_dim]` is
`('embed', None, 'heads', 'kv')`. `RULES`, the one table, maps those names to mesh axes;
`shardings(tree, mesh)` turns any tree holding the model's Variables (parameters, Adam moments,
a whole TrainState) into `NamedSharding`s. A dimension the mesh axis does not divide stays whole on
that axis (e.g. 4 heads over tensor=8), so every model runs on every mesh.

`transformer.parallel.strategies.Gspmd` compiles the ordinary train step with `jax.jit` and these shardings
(GSPMD): XLA inserts the all-gathers of fsdp-sharded weights before their use, the
reduce-scatters of their gradients and the all-reduces of tensor-parallel partial sums. The step
reads as on one device; a shard_map would need each of those collectives written by hand in
every layer.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from flax import nnx
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

AXES = ('data', 'fsdp', 'tensor')
# Logical dimension name -> mesh axis (or axes; None: not split).
RULES = (
  ('batch', ('data', 'fsdp')),
  ('embed', 'fsdp'),
  ('vocab', 'tensor'),
  ('heads', 'tensor'),
  ('mlp', 'tensor'),
  ('kv', None),
  ('positions', None),
  ('layers', None),  # the leading axis of scanned stacks (scan_layers)
)
BATCH = P(('data', 'fsdp'))
DEFAULT_MESH = (-1, 1, 1)  # every device a data-parallel replica


class MeshError(ValueError):
  """Mesh sizes that do not fit the devices."""


def logical_axes(*names: str | None) -> dict[str, Any]:
  """Metadata for `nnx.Param(value, **logical_axes('embed', 'mlp'))`: one name per dimension.

  The value is not placed when the parameter is created (`eager_sharding=False`): the model is
  built the same way with or without a mesh, and `shardings` places it."""
  return {'out_sharding': names, 'eager_sharding': False}


def partitioned(initializer: Callable, *names: str | None) -> Callable:
  """`initializer` whose parameter carries the logical names (for `nnx.Linear`, `nnx.Embed`)."""
  return nnx.with_partitioning(initializer, names, eager_sharding=False)


def check_sizes(sizes: Sequence[Any]) -> tuple[int, int, int]:
  """`sizes` as (data, fsdp, tensor) integers, each >= 1 or at most one of them -1 (the devices
  left); else a one-line MeshError. Whether they fit the devices is `mesh_shape`'s to say."""
  sizes = tuple(sizes)
  valid = lambda s: isinstance(s, int) and not isinstance(s, bool) and (s >= 1 or s == -1)
  if len(sizes) != len(AXES) or not all(map(valid, sizes)) or sizes.count(-1) > 1:
    raise MeshError(
      f'mesh {sizes}: give three sizes (data, fsdp, tensor), each >= 1 or at most one of them -1'
    )
  return sizes  # type: ignore[return-value]


def splits_the_model(sizes: Sequence[int]) -> bool:
  """Whether a mesh of `sizes` shards the parameters (fsdp or tensor > 1)."""
  return tuple(sizes)[1:] != (1, 1)


def mesh_shape(sizes: Sequence[int], device_count: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with one -1 resolved to the devices left; raises a one-line MeshError
  when the sizes are malformed (`check_sizes`) or do not multiply to `device_count`."""
  sizes = check_sizes(sizes)
  known = int(np.prod([s for s in sizes if s != -1]))
  if device_count % known:
    raise MeshError(f'mesh {sizes} does not divide the {device_count} devices')
  resolved = tuple(device_count // known if s == -1 else s for s in sizes)
  if int(np.prod(resolved)) != device_count:
    raise MeshError(f'mesh {sizes} covers {np.prod(resolved)} devices, not the {device_count}')
  return resolved  # type: ignore[return-value]


def make_mesh(sizes: Sequence[int] = DEFAULT_MESH, devices: Sequence[Any] | None = None) -> Mesh:
  """The ('data', 'fsdp', 'tensor') mesh of `devices` (default: all devices of all hosts), in
  jax.devices() order: each host's devices are consecutive, so `tensor` and `fsdp` groups stay
  within a host when they fit in one."""
  devices = list(devices or jax.devices())
  shape = mesh_shape(sizes, len(devices))
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES)


def _fitted(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """`spec` with every axis that does not divide its dimension dropped (that dimension whole)."""
  fitted = []
  for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    ways = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    fitted.append(axes if names and size % ways == 0 else None)
  return P(*fitted)


def shardings(tree: Any, mesh: Mesh) -> Any:
  """The `NamedSharding` of every array of `tree` (Variables with logical names split by
  `RULES`; everything else, e.g. step counters, replicated)."""
  with nnx.logical_axis_rules(RULES):
    specs = nnx.get_partition_spec(tree)
  is_spec = lambda x: isinstance(x, P)
  return jax.tree.map(
    lambda spec, x: NamedSharding(mesh, _fitted(spec, np.shape(x), mesh)),
    specs,
    tree,
    is_leaf=is_spec,
  )


def per_device_bytes(tree: Any) -> dict[Any, int]:
  """Bytes of `tree`'s arrays held by each device (read from the arrays' shards)."""
  held: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held
