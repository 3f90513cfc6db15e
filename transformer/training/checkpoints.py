"""Orbax checkpoints of a training run: parameters, optimizer state, step, RNG and data position.

Layout in the workdir (one folder per step, each item a sub-folder):

    checkpoints/<step>/params     the model parameters (a PyTree of arrays, no pickle)
    checkpoints/<step>/train      step, optimizer state and the base RNG key
    checkpoints/<step>/manifest   shape, dtype and checksum of every array of params and train
    checkpoints/<step>/data       the data iterator's position (one JSON per process)
    best/<step>/...               the checkpoint with the best validation BLEU so far
    average/<step>/               parameters averaged over the last checkpoints (`transformer.training.average`)
    damaged/<folder>-<step>[...]  checkpoints that could not be read, moved aside for inspection

Each array is stored whole (Orbax, tensorstore), whatever held it: host arrays, or jax.Arrays split
over a mesh, whose processes each write their own shards. A restore reads into the layout the
caller asks for: ShapeDtypeStructs with shardings (each process reads only its shards: a
checkpoint written on 8 replicas resumes on a (2, 2, 2) FSDP mesh), or host arrays (`translate`
on one device). It first compares the manifest with the model it restores into (a mismatch is an
error that names the first leaf that differs), then checks every array's checksum (`_sum32`, the
same on every layout). A checkpoint that cannot be read or whose data is damaged is
reported, moved aside (so that the run can save that step again) and the previous one is used.
Inference restores the parameters alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shutil
from typing import Any, Callable
import zlib

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class _HideOrbaxNotices(logging.Filter):
  """Orbax warns that a manager opened read-only is read-only (inference opens it so on purpose),
  and its writer threads log the traceback of a failed write, which `Checkpointer` reports in one
  line (`CheckpointWriteError`) where the run waits for the write."""

  HIDDEN = (
    'Given directory is read only',
    '_SignalingThread.run() raised',  # the writer threads' tracebacks of a failed write ...
    'in background save thread',
    'Save Finalize thread',
  )

  def filter(self, record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not any(fragment in message for fragment in self.HIDDEN)


class _HideOrbaxWritersLeftovers(logging.Filter):
  """After a failed write (or a read of a damaged checkpoint), asyncio reports each of Orbax's
  other tasks that failed the same way ('... exception was never retrieved'); the run has
  reported the failure in one line (or set the checkpoint aside and said so)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    ours = 'orbax' in message or 'OCDBT' in message  # Orbax's writers, tensorstore's readers
    return not ('exception was never retrieved' in message and ours)


logging.getLogger('absl').addFilter(_HideOrbaxNotices())
logging.getLogger('asyncio').addFilter(_HideOrbaxWritersLeftovers())
ITEMS = ('params', 'train', 'manifest', 'data')


class CheckpointError(RuntimeError):
  """There are checkpoints, but none of them can be read."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (a full disk, a read-only or vanished filesystem)."""


@contextlib.contextmanager
def _writing(directory: Any, step: int | None):
  """Turns a failed (possibly asynchronous) checkpoint write into one CheckpointWriteError that
  names the directory and the system's reason."""
  try:
    yield
  except Exception as e:  # noqa: BLE001  Orbax raises the writer's error as ValueError and others
    text = str(e)
    reason = next(
      (
        r
        for r in ('No space left on device', 'Read-only file system', 'Permission denied')
        if r in text
      ),
      text.splitlines()[0] if text else type(e).__name__,
    )
    what = f'checkpoint {step}' if step is not None else 'a checkpoint'
    code = errno.ENOSPC if reason == 'No space left on device' else errno.EIO
    raise CheckpointWriteError(code, f'cannot write {what}: {reason}', str(directory)) from e


class CheckpointMismatch(ValueError):
  """A readable checkpoint that does not fit the model or optimizer it is restored into."""


class _DamagedCheckpoint(Exception):
  """A checkpoint whose files cannot be read or whose arrays fail their checksum."""


# ---------------------------------------------------------------------------------------------
# The data position: one JSON per process, written by every process into the step's folder.


class ProcessStatesHandler:
  """Orbax handler for a data iterator's position: `iterator.get_state()` (a JSON-able dict) is
  written by each process to `process_<i>-of-<n>.json`; restoring returns every process's saved
  state, `{'process_count': n, 'states': {i: state}}`, and leaves applying it to the caller."""

  def save(self, directory: epath.Path, args: 'DataSave') -> None:
    state = args.item.get_state()
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    (directory / name).write_text(json.dumps(state))

  def restore(self, directory: epath.Path, args: 'DataRestore' | None = None) -> dict[str, Any]:
    del args
    states, count = {}, None
    for path in directory.iterdir():
      name = path.name
      if name.startswith('process_') and name.endswith('.json'):
        index, count = (int(x) for x in name[len('process_') : -len('.json')].split('-of-'))
        states[index] = json.loads(path.read_text())
    return {'process_count': count, 'states': states}

  def metadata(self, directory: epath.Path) -> None:
    del directory

  def structure(self, directory: epath.Path) -> None:
    del directory

  def finalize(self, directory: epath.Path) -> None:
    del directory

  def close(self) -> None:
    pass

  @classmethod
  def typestr(cls) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


@ocp.args.register_with_handler(ProcessStatesHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(ProcessStatesHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  pass


# ---------------------------------------------------------------------------------------------
# The manifest: what every array should be.


def _crc32(array: np.ndarray) -> int:
  return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast('B'))


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's finaliser: a bijection of uint32 that spreads every input bit."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words: `[...]`, or `[..., 2]` for 8-byte dtypes."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _sum32(x: jax.Array) -> jax.Array:
  """A 32-bit checksum of the global array `x`: the sum (mod 2³²) over its elements of a mix of
  each element's bits with its position. Integer sums are exact in any order, so the checksum does
  not depend on how `x` is split over devices or processes: a checkpoint written on one mesh is
  verified on another, each process reading only its own shards."""
  words = _words(x)
  position = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):
    position = position + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(
      stride % 2**32
    )
    stride *= words.shape[axis]
  return jnp.sum(_fmix32(words ^ _fmix32(position + jnp.uint32(1))), dtype=jnp.uint32)


_sum32_each = jax.jit(lambda leaves: [_sum32(x) for x in leaves])


def checksums(leaves: list[Any]) -> list[int]:
  """`_sum32` of each leaf: of a jax.Array where its shards are, of anything else on the host's
  CPU device. One program per set of devices, each finished before the next starts, so that the
  processes of a multi-host run meet at its collectives in the same order."""
  groups: dict[tuple[int, ...], list[tuple[int, jax.Array]]] = {}
  for index, leaf in enumerate(leaves):
    if not isinstance(leaf, jax.Array):
      leaf = jax.device_put(np.asarray(leaf), jax.local_devices(backend='cpu')[0])
    devices = tuple(sorted(device.id for device in leaf.sharding.device_set))
    groups.setdefault(devices, []).append((index, leaf))
  found: list[int] = [0] * len(leaves)
  for group in groups.values():
    values = jax.device_get(_sum32_each([leaf for _, leaf in group]))
    for (index, _), value in zip(group, values, strict=True):
      found[index] = int(value)
  return found


CHECKSUM = 'sum32'  # the manifest's checksum; manifests without the field hold CRC-32s


def manifest(tree: Any, *, with_checksums: bool = True) -> dict[str, list]:
  """`{leaf path: [shape, dtype(, checksum)]}` of a PyTree of arrays (host arrays, or jax.Arrays
  laid out on any mesh: the checksums are computed where the shards are)."""
  out, arrays = {}, {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = jax.tree_util.keystr(path)
    out[name] = [list(np.shape(leaf)), str(np.dtype(leaf.dtype))]
    if with_checksums and not isinstance(leaf, jax.ShapeDtypeStruct):
      arrays[name] = leaf
  for name, value in zip(arrays, checksums(list(arrays.values())), strict=True):
    out[name].append(value)
  return out


def _first_difference(saved: dict[str, list], target: dict[str, list], what: str) -> str | None:
  """A sentence naming the first leaf where `saved` and `target` differ in shape or dtype."""
  for path in target:
    if path not in saved:
      return f'{what}{path} is in the model but not in the checkpoint'
    if saved[path][:2] != target[path][:2]:
      return (
        f'{what}{path} is {tuple(saved[path][0])} {saved[path][1]} in the checkpoint, '
        f'{tuple(target[path][0])} {target[path][1]} in the model'
      )
  extra = [path for path in saved if path not in target]
  if extra:
    return f'{what}{extra[0]} is in the checkpoint but not in the model'
  return None


def _legacy_crc32(leaf: Any) -> int:
  """The CRC-32 that manifests before `CHECKSUM` recorded, of the whole array."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    from jax.experimental import multihost_utils

    leaf = multihost_utils.process_allgather(leaf, tiled=True)
  return _crc32(np.asarray(leaf))


def _verify_checksums(restored: Any, saved: dict[str, list], what: str, kind: str | None) -> None:
  """Compares `restored` with the manifest's checksums (`kind`: CHECKSUM, or None for CRC-32)."""
  if kind == CHECKSUM:
    sums = {name: entry[2] for name, entry in manifest(restored).items()}
  else:
    leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
    sums = {jax.tree_util.keystr(path): _legacy_crc32(leaf) for path, leaf in leaves}
  for name, value in sums.items():
    if value != saved[name][2]:
      raise _DamagedCheckpoint(f'{what}{name} fails its checksum (damaged data)')


def _abstract(tree: Any) -> Any:
  """The restore target: same tree, ShapeDtypeStruct leaves. A ShapeDtypeStruct with a sharding
  is restored as a jax.Array laid out so (each process reads its shards); anything else as a
  host NumPy array."""
  return jax.tree.map(
    lambda x: (
      x
      if isinstance(x, jax.ShapeDtypeStruct)
      else jax.ShapeDtypeStruct(np.shape(x), np.dtype(x.dtype))
    ),
    tree,
  )


def _restore_args(abstract: Any) -> Any:
  """Orbax's restore arguments for `_abstract`'s leaves: into their sharding, or to the host."""
  return jax.tree.map(
    lambda x: (
      ocp.ArrayRestoreArgs(sharding=x.sharding)
      if x.sharding is not None
      else ocp.RestoreArgs(restore_type=np.ndarray)
    ),
    abstract,
  )


def _restore_item(tree: Any) -> ocp.args.PyTreeRestore:
  abstract = _abstract(tree)
  return ocp.args.PyTreeRestore(abstract, restore_args=_restore_args(abstract))


# ---------------------------------------------------------------------------------------------
# The checkpointer.


def _manager(directory: str, max_to_keep: int, *, read_only: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=None if read_only else max_to_keep,
    save_interval_steps=0 if read_only else 1,
    create=not read_only,
    read_only=read_only,
    enable_async_checkpointing=not read_only,
    cleanup_tmp_directories=not read_only,
    # Its own barrier names: the latest and the best manager may save the same step at once,
    # and several processes meet at barriers named after the step.
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      barrier_sync_key_prefix=os.path.basename(directory)
    ),
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


def _train_part(state: Any) -> dict[str, Any]:
  """What a `TrainState` holds besides the parameters."""
  return {'step': state.step, 'opt_state': state.opt_state, 'rng': state.rng}


@dataclasses.dataclass(frozen=True)
class Record:
  """What a checkpoint records of its run beside the arrays (in its manifest).

  Attributes:
    bleu: the step's validation BLEU, or None.
    evaluation_due: the step's evaluation has not run yet (a run preempted first): the resumed
      run does it.
    loop_minutes: the training loop's minutes so far (a time budget counts the runs it resumes).
    train_loss: the last training loss logged (for the results of a run resumed at its end).
    averaged_steps: the steps an average checkpoint is the mean of, or None.
  """

  bleu: float | None = None
  evaluation_due: bool = False
  loop_minutes: float = 0.0
  train_loss: float | None = None
  averaged_steps: tuple[int, ...] | None = None

  def manifest_fields(self) -> dict[str, Any]:
    """The manifest's fields for this record (only those that say something)."""
    fields: dict[str, Any] = {}
    if self.bleu is not None:
      fields['metrics'] = {'bleu': float(self.bleu)}
    if self.evaluation_due:
      fields['evaluation_due'] = True
    if self.loop_minutes:
      fields['loop_minutes'] = float(self.loop_minutes)
    if self.train_loss is not None:
      fields['train_loss'] = float(self.train_loss)
    if self.averaged_steps is not None:
      fields['averaged_steps'] = list(self.averaged_steps)
    return fields

  @classmethod
  def from_manifest(cls, saved: dict[str, Any]) -> Record:
    averaged = saved.get('averaged_steps')
    return cls(
      bleu=(saved.get('metrics') or {}).get('bleu'),
      evaluation_due=bool(saved.get('evaluation_due')),
      loop_minutes=float(saved.get('loop_minutes', 0.0)),
      train_loss=saved.get('train_loss'),
      averaged_steps=None if averaged is None else tuple(averaged),
    )


@dataclasses.dataclass(frozen=True)
class Restored:
  """A restored checkpoint: the state (or the parameters alone), its step, the data iterator's
  saved position (`{'process_count': n, 'states': {process: state}}`, or None) and its record."""

  state: Any
  step: int
  data: dict[str, Any] | None = None
  record: Record = Record()


class Checkpointer:
  """Saves, verifies and restores `(TrainState on the host, data position)` in a workdir.

  What is best is the caller's decision (`save(..., best=True)`); the checkpointer keeps that
  one in `best/` and records its validation BLEU. `read_only=True` (inference) creates nothing in
  the workdir and moves nothing aside.
  """

  def __init__(
    self, workdir: str, *, keep: int = 3, keep_best: bool = True, read_only: bool = False
  ):
    self.workdir = workdir
    self.read_only = read_only
    self.latest = _manager(os.path.join(workdir, 'checkpoints'), keep, read_only=read_only)
    self.best = (
      _manager(os.path.join(workdir, 'best'), 1, read_only=read_only) if keep_best else None
    )
    self._average: ocp.CheckpointManager | None = None

  def best_bleu(self) -> float | None:
    """The validation BLEU recorded with the best checkpoint (None: none, or unreadable)."""
    if self.best is None or self.best.latest_step() is None:
      return None
    try:
      saved = self.best.restore(
        self.best.latest_step(), args=ocp.args.Composite(manifest=ocp.args.JsonRestore())
      )
      return Record.from_manifest(saved['manifest']).bleu
    except Exception:  # noqa: BLE001  a damaged best checkpoint is replaced by the next better one
      return None

  def save(
    self,
    step: int,
    state: Any,
    data_iterator: Any | None = None,
    *,
    record: Record = Record(),
    best: bool = False,
    force: bool = False,
  ) -> None:
    """Saves `state` (host arrays, or jax.Arrays on any mesh: each process writes its own shards)
    asynchronously (returns once the arrays are copied), with the data iterator's position and
    `record`; `best` also keeps it as the best one (replacing the previous best). A step that is
    already saved is not saved again."""
    train = _train_part(state)
    contents = {
      'params': manifest(state.params),
      'train': manifest(train),
      'checksum': CHECKSUM,
      **record.manifest_fields(),
    }
    items = {
      'params': ocp.args.PyTreeSave(state.params),
      'train': ocp.args.PyTreeSave(train),
      'manifest': ocp.args.JsonSave(contents),
    }
    if data_iterator is not None:
      items['data'] = DataSave(data_iterator)
    if step not in self.latest.all_steps():  # a resumed run may mark its restored step best
      with _writing(self.latest.directory, step):
        self.latest.save(step, args=ocp.args.Composite(**items), force=force)
    if best and self.best is not None and step not in self.best.all_steps():
      with _writing(self.best.directory, step):
        self.best.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, target: Any, *, which: str = 'latest') -> Restored | None:
    """The newest readable checkpoint of `which` ('latest' or 'best') as a whole training state
    restored onto `target` (a TrainState of arrays or ShapeDtypeStructs, in the layout to
    restore into), with the data iterator's saved position; None when there is no checkpoint.

    Raises:
      CheckpointMismatch: the newest readable checkpoint does not fit `target`.
      CheckpointError: there are checkpoints, but none could be read.
    """
    return self._newest(which, lambda manager, step: self._state_at(manager, step, target))

  def restore_params(self, target_params: Any, *, which: str = 'latest') -> Restored | None:
    """The parameters alone of the newest readable checkpoint of `which` ('latest', 'best' or
    'average'), restored onto `target_params` (no optimizer state is read or needed); errors as
    `restore`'s."""
    return self._newest(which, lambda manager, step: self._params_at(manager, step, target_params))

  def params_at(self, step: int, target_params: Any) -> Any:
    """The verified parameters of checkpoint `step` of 'latest' (no fallback to another step)."""
    return self._params_at(self.latest, step, target_params).state

  def _newest(self, which: str, read: Callable[[Any, int], Restored]) -> Restored | None:
    """`read(manager, step)` of the newest checkpoint of `which` that reads; a damaged one is set
    aside (`damaged/`) and the next older one tried."""
    manager = self._manager(which)
    if manager is None:
      return None
    errors = []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = read(manager, step)
      except _DamagedCheckpoint as e:
        errors.append(f'checkpoint {step} in {manager.directory} cannot be restored ({e})')
        log.warning('%s; %s', errors[-1], self._set_aside(manager, step))
        continue
      if errors:
        log.warning(
          'restored checkpoint %d after skipping %d unreadable newer one(s)', step, len(errors)
        )
      return restored
    if errors:
      raise CheckpointError('no checkpoint could be restored:\n' + '\n'.join(errors))
    return None

  def _params_at(self, manager: ocp.CheckpointManager, step: int, params: Any) -> Restored:
    saved = _saved_manifest(manager, step)
    _check_fits(saved, 'params', params, f'checkpoint {step} in {manager.directory}')
    restored = _read(manager, step, {'params': _restore_item(params)})
    _verify_checksums(restored['params'], saved['params'], 'params', saved.get('checksum'))
    return Restored(restored['params'], step, record=Record.from_manifest(saved))

  def _state_at(self, manager: ocp.CheckpointManager, step: int, target: Any) -> Restored:
    saved = _saved_manifest(manager, step)
    where = f'checkpoint {step} in {manager.directory}'
    _check_fits(saved, 'params', target.params, where)
    train = _train_part(target)
    _check_fits(saved, 'train', train, where)
    items = {'params': _restore_item(target.params), 'train': _restore_item(train)}
    if 'data' in _item_names(manager, step):
      items['data'] = DataRestore()
    restored = _read(manager, step, items)
    for part in ('params', 'train'):
      _verify_checksums(restored[part], saved[part], part, saved.get('checksum'))
    train = restored['train']
    state = target.replace(
      params=restored['params'], step=train['step'], opt_state=train['opt_state'], rng=train['rng']
    )
    return Restored(state, step, restored.get('data'), Record.from_manifest(saved))

  def _set_aside(self, manager: ocp.CheckpointManager, step: int) -> str:
    """Moves a damaged checkpoint to `damaged/` so that the run can save its step again."""
    if self.read_only:
      return 'trying an older one'
    source = os.path.join(str(manager.directory), str(step))
    name = f'{os.path.basename(str(manager.directory))}-{step}'
    destination = os.path.join(self.workdir, 'damaged', name)
    suffix = 1
    while os.path.exists(destination):
      suffix += 1
      destination = os.path.join(self.workdir, 'damaged', f'{name}.{suffix}')
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      shutil.move(source, destination)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f'checkpoint {step} set aside')
    manager.reload()
    return f'moved to {destination}; trying an older one'

  def all_steps(self, which: str = 'latest') -> list[int]:
    manager = self._manager(which)
    return sorted(manager.all_steps()) if manager is not None else []

  def _manager(self, which: str) -> ocp.CheckpointManager | None:
    """The manager of 'latest', 'best' or 'average' (None where there is none)."""
    if which not in ('latest', 'best', 'average'):
      raise ValueError(f"which must be 'latest', 'best' or 'average', got {which!r}")
    if which == 'average':
      folder = os.path.join(self.workdir, 'average')
      if self.read_only and not os.path.isdir(folder):
        return None
      if self._average is None:
        self._average = _manager(folder, 1, read_only=self.read_only)
      return self._average
    return self.best if which == 'best' else self.latest

  def save_params(self, which: str, step: int, params: Any, record: Record) -> None:
    """Saves parameters alone as the only checkpoint of `which` (e.g. 'average'), with `record`
    in their manifest; waits until they are written."""
    manager = self._manager(which)
    for old in manager.all_steps():
      manager.delete(old)
    items = {
      'params': ocp.args.PyTreeSave(params),
      'manifest': ocp.args.JsonSave(
        {'params': manifest(params), 'checksum': CHECKSUM, **record.manifest_fields()}
      ),
    }
    with _writing(manager.directory, step):
      manager.save(step, args=ocp.args.Composite(**items), force=True)
      manager.wait_until_finished()

  def wait(self) -> None:
    """Returns once every save has been written (CheckpointWriteError if one could not be)."""
    with _writing(self.latest.directory, None):
      self.latest.wait_until_finished()
    if self.best is not None:
      with _writing(self.best.directory, None):
        self.best.wait_until_finished()

  def close(self) -> None:
    for manager in (self.latest, self.best, self._average):
      if manager is not None:
        with _writing(manager.directory, None):
          manager.close()


def _item_names(manager: ocp.CheckpointManager, step: int) -> set[str]:
  """The items a checkpoint was saved with, from Orbax's own step metadata."""
  return set(manager.metadata(step).item_handlers or ())


def _saved_manifest(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The checkpoint's manifest; _DamagedCheckpoint where it is missing or torn."""
  try:
    return manager.restore(step, args=ocp.args.Composite(manifest=ocp.args.JsonRestore()))[
      'manifest'
    ]
  except Exception as e:  # noqa: BLE001  missing or torn manifest
    raise _DamagedCheckpoint(f'manifest: {type(e).__name__}: {e}') from e


def _check_fits(saved: dict[str, Any], part: str, target: Any, where: str) -> None:
  """CheckpointMismatch unless the saved `part` ('params' or 'train') has `target`'s shapes."""
  problem = _first_difference(saved[part], manifest(target, with_checksums=False), part)
  if problem and part == 'params':
    raise CheckpointMismatch(f'{where} does not fit this model: {problem}')
  if problem:
    raise CheckpointMismatch(
      f'{where} holds a different optimizer state than this config builds ({problem}): '
      'the config changes the optimizer (e.g. max_grad_norm); use the original values or a new '
      'workdir'
    )


def _read(manager: ocp.CheckpointManager, step: int, items: dict[str, Any]) -> dict[str, Any]:
  """The checkpoint's `items`; _DamagedCheckpoint for torn or unreadable array files."""
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # noqa: BLE001  torn or unreadable array files
    raise _DamagedCheckpoint(f'{type(e).__name__}: {e}') from e
