"""Parallelism: where the train state and batches live, and how steps are compiled.

    ShardMap      (default) jax.jit(jax.shard_map(step)) over a 1-D 'data' mesh of every device
                  of every host: the state is replicated, the batch split along its rows.
    Pmap          the same per-replica step under jax.pmap (state with a leading device axis).
    Gspmd         jax.jit with shardings over the ('data', 'fsdp', 'tensor') mesh of
                  `transformer.parallel.sharding`: parameters and Adam moments split as their logical
                  axes say (FSDP, tensor parallelism), the batch's rows over data × fsdp.
    SingleDevice  one device, plain jax.jit.

The step functions (`transformer.training.steps`) compute sums over tokens, divided once. Under
ShardMap and Pmap they are per-replica and reduce with one `psum` over `AXIS`; under Gspmd they
see the global batch and XLA adds the collectives. Every mode computes the same numbers as one
device. Checkpoints do not depend on the mode, the mesh or the device count: the replicated modes
save one host copy; Gspmd saves and restores its shards where they are (`transformer.training.checkpoints`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from transformer.parallel import sharding

AXIS = 'data'
Batch = dict[str, jax.Array]


class DataParallel:
  """The interface of the three modes; see the module docstring."""

  name: str
  axis_name: str | None = AXIS

  @property
  def num_replicas(self) -> int:
    """Replicas across all hosts (the global batch is split this many ways)."""
    raise NotImplementedError

  def device_state(self, tree: Any) -> Any:
    """Host values -> the replicated on-device layout of this mode."""
    raise NotImplementedError

  def host_state(self, tree: Any) -> Any:
    """The on-device layout -> one host copy (NumPy)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

  def checkpoint_state(self, tree: Any) -> Any:
    """The on-device layout -> what a checkpoint saves (here: one host copy)."""
    return self.host_state(tree)

  def restore_target(self, tree: Any) -> Any:
    """What a checkpoint restores into, for `device_state` to place (here: host arrays)."""
    return tree

  def device_batch(self, local_batch: dict[str, np.ndarray]) -> Batch:
    """This host's rows `[local_rows, ...]` -> the step's batch layout."""
    raise NotImplementedError

  def compile_train_step(self, step: Callable) -> Callable:
    """`step(state, rngs, batch, learning_rate)` -> the compiled step; `state` is donated."""
    raise NotImplementedError

  def compile_eval_step(self, step: Callable) -> Callable:
    """`step(params, rngs, batch)` -> the compiled step."""
    raise NotImplementedError

  def metrics(self, metrics: Any) -> dict[str, float]:
    """Step outputs (replicated) -> Python floats."""
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


class SingleDevice(DataParallel):
  """One device (the first local one); no collectives."""

  name = 'none'
  axis_name = None

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    if jax.process_count() > 1:
      raise ValueError(
        "parallelism='none' is single-device; use 'shard_map' or 'pmap' with several hosts"
      )
    self.device = (devices or jax.local_devices())[0]

  @property
  def num_replicas(self) -> int:
    return 1

  def device_state(self, tree: Any) -> Any:
    return jax.device_put(tree, self.device)

  def device_batch(self, local_batch: dict[str, np.ndarray]) -> Batch:
    return jax.device_put(local_batch, self.device)

  def compile_train_step(self, step: Callable) -> Callable:
    return jax.jit(step, donate_argnums=(0,))

  def compile_eval_step(self, step: Callable) -> Callable:
    return jax.jit(step)


class ShardMap(DataParallel):
  """`jax.jit(jax.shard_map(step))` over a 1-D mesh of `devices` (default: all, of all hosts)."""

  name = 'shard_map'

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    self.mesh = Mesh(np.asarray(devices or jax.devices()), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.rows = NamedSharding(self.mesh, P(AXIS))

  @property
  def num_replicas(self) -> int:
    return self.mesh.size

  def device_state(self, tree: Any) -> Any:
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree
    )

  def device_batch(self, local_batch: dict[str, np.ndarray]) -> Batch:
    return {k: jax.make_array_from_process_local_data(self.rows, v) for k, v in local_batch.items()}

  def _shard_map(self, step: Callable, in_specs, out_specs) -> Callable:
    # check_vma=False: the replicated parameters then enter the step untyped, their gradients are
    # per-replica partial sums, and the step's one explicit psum reduces them, as under pmap. With
    # check_vma=True, autodiff's transpose of the implicit pvary of the parameters would already
    # sum the gradients over the axis, and the explicit psum would multiply every gradient by the
    # number of devices.
    return jax.shard_map(
      step, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )

  def compile_train_step(self, step: Callable) -> Callable:
    sharded = self._shard_map(step, (P(), P(), P(AXIS), P()), (P(), P()))
    return jax.jit(sharded, donate_argnums=(0,))

  def compile_eval_step(self, step: Callable) -> Callable:
    return jax.jit(self._shard_map(step, (P(), P(), P(AXIS)), P()))


class Pmap(DataParallel):
  """`jax.pmap` over the local devices; the state carries a leading local-device axis."""

  name = 'pmap'

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    self.devices = list(devices or jax.local_devices())
    self._pmap_devices = list(devices) if devices else None  # None: pmap's own default (all hosts)

  @property
  def num_replicas(self) -> int:
    return len(self.devices) * jax.process_count()

  def device_state(self, tree: Any) -> Any:
    n = len(self.devices)
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)).copy(), tree)

  def host_state(self, tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(x[0]), tree)

  def device_batch(self, local_batch: dict[str, np.ndarray]) -> Batch:
    n = len(self.devices)
    return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in local_batch.items()}

  def compile_train_step(self, step: Callable) -> Callable:
    return jax.pmap(
      step,
      axis_name=AXIS,
      in_axes=(0, None, 0, None),
      donate_argnums=(0,),
      devices=self._pmap_devices,
    )

  def compile_eval_step(self, step: Callable) -> Callable:
    return jax.pmap(step, axis_name=AXIS, in_axes=(0, None, 0), devices=self._pmap_devices)

  def metrics(self, metrics: Any) -> dict[str, float]:
    return super().metrics(jax.tree.map(lambda x: x[0], metrics))


class Gspmd(DataParallel):
  """`jax.jit` with shardings over a ('data', 'fsdp', 'tensor') mesh (`transformer.parallel.sharding`)."""

  name = 'gspmd'
  axis_name = None  # the step sees the global batch; XLA inserts the collectives

  def __init__(
    self, devices: Sequence[jax.Device] | None = None, mesh: Sequence[int] = sharding.DEFAULT_MESH
  ):
    self.mesh = sharding.make_mesh(mesh, devices)
    self.rows = NamedSharding(self.mesh, sharding.BATCH)
    self.replicated = NamedSharding(self.mesh, P())

  @property
  def num_replicas(self) -> int:
    return self.mesh.shape['data'] * self.mesh.shape['fsdp']

  def device_state(self, tree: Any) -> Any:
    """Each array split as `sharding.shardings` says; every process fills its own shards (an
    array already laid out so, e.g. restored from a checkpoint, is kept)."""

    def place(x: Any, where: NamedSharding) -> jax.Array:
      if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(where, np.ndim(x)):
        return x
      return jax.make_array_from_callback(np.shape(x), where, lambda index: np.asarray(x)[index])

    return jax.tree.map(place, tree, sharding.shardings(tree, self.mesh))

  def host_state(self, tree: Any) -> Any:
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)

  def checkpoint_state(self, tree: Any) -> Any:
    """The sharded arrays themselves: each process writes its own shards, none gathers."""
    return tree

  def restore_target(self, tree: Any) -> Any:
    """ShapeDtypeStructs with this mesh's shardings: each process reads only its shards."""
    return jax.tree.map(
      lambda x, where: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=where),
      tree,
      sharding.shardings(tree, self.mesh),
    )

  def device_batch(self, local_batch: dict[str, np.ndarray]) -> Batch:
    return {k: jax.make_array_from_process_local_data(self.rows, v) for k, v in local_batch.items()}

  def compile_train_step(self, step: Callable) -> Callable:
    """Compiled at the first call, with the state's shardings as the new state's."""
    compiled: list[Callable] = []

    def run(state, rngs, batch, learning_rate):
      if not compiled:
        keep = jax.tree.map(lambda x: x.sharding, state)
        compiled.append(jax.jit(step, out_shardings=(keep, self.replicated), donate_argnums=(0,)))
      return compiled[0](state, rngs, batch, learning_rate)

    return run

  def compile_eval_step(self, step: Callable) -> Callable:
    return jax.jit(step, out_shardings=self.replicated)


MODES: dict[str, type[DataParallel]] = {
  'shard_map': ShardMap,
  'pmap': Pmap,
  'gspmd': Gspmd,
  'none': SingleDevice,
}
PARALLELISMS = tuple(MODES)


def check(parallelism: str, mesh: Sequence[int]) -> None:
  """Raises a one-line ValueError unless `parallelism` is a mode and can run on a mesh of
  `mesh`'s sizes (`sharding.check_sizes`): only 'gspmd' splits the model."""
  if parallelism not in MODES:
    raise ValueError(f'parallelism must be one of {PARALLELISMS}, got {parallelism!r}')
  sizes = sharding.check_sizes(mesh)
  if sharding.splits_the_model(sizes) and parallelism != 'gspmd':
    raise ValueError(
      f"mesh {sizes} splits the model (fsdp or tensor > 1): that needs parallelism='gspmd', "
      f'not {parallelism!r}'
    )


def make(
  parallelism: str = 'shard_map',
  devices: Sequence[jax.Device] | None = None,
  mesh: Sequence[int] = sharding.DEFAULT_MESH,
) -> DataParallel:
  """The mode for `parallelism` ('shard_map', 'pmap', 'gspmd' or 'none'); `mesh` (data, fsdp,
  tensor) is Gspmd's, and the others split over data only (`check`)."""
  check(parallelism, mesh)
  if parallelism == 'gspmd':
    return Gspmd(devices, mesh)
  return MODES[parallelism](devices)
