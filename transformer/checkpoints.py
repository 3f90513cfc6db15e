"""Orbax checkpoints of a training run: parameters, optimizer state, step, RNG and data position.

Layout in the workdir:

    checkpoints/<step>/state   TrainState as a PyTree of host arrays (no pickle)
    checkpoints/<step>/data    the grain iterator's position (one JSON per process)
    best/<step>/...            the checkpoint with the best validation BLEU so far

The state is saved as plain host arrays, independent of how many devices held it, so a checkpoint
written on 8 devices restores on 1 or 2 and the other way. Saves are asynchronous; a newest
checkpoint that cannot be read (truncated, corrupted) is reported and the previous one is used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def _manager(directory: str, max_to_keep: int, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True,
      best_fn=(lambda metrics: metrics['bleu']) if best else None, best_mode='max',
      keep_checkpoints_without_metrics=not best, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=('state', 'data'))


class Checkpointer:
  """Saves and restores `(TrainState on the host, data iterator)` in a workdir."""

  def __init__(self, workdir: str, *, keep: int = 3, keep_best: bool = True):
    self.latest = _manager(os.path.join(workdir, 'checkpoints'), keep, best=False)
    self.best = _manager(os.path.join(workdir, 'best'), 1, best=True) if keep_best else None
    self.best_bleu: float | None = None

  def save(self, step: int, host_state: Any, data_iterator: Any | None, *,
           bleu: float | None = None, force: bool = False) -> None:
    """Saves asynchronously (returns once the arrays are copied). With `bleu`, also keeps the
    checkpoint as the best one if the score is the best so far."""
    args = {'state': ocp.args.StandardSave(host_state)}
    if data_iterator is not None:
      import grain  # the data extra; only runs that have a data iterator get here
      args['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    self.latest.save(step, args=ocp.args.Composite(**args), force=force)
    if bleu is not None and self.best is not None and (self.best_bleu is None or bleu > self.best_bleu):
      self.best_bleu = bleu
      self.best.save(step, args=ocp.args.Composite(**args), metrics={'bleu': bleu}, force=True)

  def restore(self, abstract_state: Any, data_iterator: Any | None, *, which: str = 'latest',
              step: int | None = None) -> tuple[Any, int] | None:
    """Restores the newest readable checkpoint (or `step`) onto `abstract_state`'s structure.

    Returns:
      (host state, step), or None when there is no checkpoint. Unreadable newer checkpoints are
      logged and skipped.
    """
    manager = self.best if which == 'best' else self.latest
    if manager is None:
      return None
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    errors = []
    for candidate in steps:
      args = {'state': ocp.args.StandardRestore(abstract_state)}
      if data_iterator is not None:
        import grain
        args['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = manager.restore(candidate, args=ocp.args.Composite(**args))
      except Exception as e:  # noqa: BLE001  any unreadable checkpoint: fall back to an older one
        message = f'checkpoint {candidate} in {manager.directory} cannot be restored ({type(e).__name__}: {e})'
        log.warning('%s; trying an older one', message)
        errors.append(message)
        continue
      if errors:
        log.warning('restored checkpoint %d after skipping %d unreadable newer one(s)', candidate, len(errors))
      return restored['state'], candidate
    if errors:
      raise RuntimeError('no checkpoint could be restored:\n' + '\n'.join(errors))
    return None

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    if self.best is not None:
      self.best.close()


def abstract_host_state(host_state: Any) -> Any:
  """The restore target for a host state: same tree, NumPy leaves (no device placement)."""
  return jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), host_state)
