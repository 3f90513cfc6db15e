"""One training run per workdir: a lock file that the run holds for its whole life.

    with WorkdirLock(workdir, say=print):
      ...   # the run: nothing is written to the workdir before the lock is held

The lock is `DIR/lock.json`, created atomically (`O_CREAT | O_EXCL`) with the holder's host, pid,
start time and a token of its own; a thread rewrites its heartbeat every `HEARTBEAT_SECONDS`. A
second run that finds it stops at once with `WorkdirBusy`, one line naming the holder. A lock
whose holder is gone is taken over with a warning: on the same host when its pid no longer runs,
on another host when its heartbeat is older than `STALE_SECONDS`. The lock is released (the file
removed) on every way out of the `with` block; a killed run leaves it behind for the next run to
take over. Reading a workdir (translate, average) takes no lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from typing import Any, Callable
import uuid

from transformer import _atomic

LOCK_FILE = 'lock.json'
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0  # a lock of another host without a heartbeat for this long is abandoned


class WorkdirBusy(RuntimeError):
  """Another live run holds the workdir's lock."""


def _now() -> float:
  return time.time()


def _stamp(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
    '%Y-%m-%d %H:%M:%S UTC'
  )


def process_runs(pid: int) -> bool:
  """Whether a process of this id runs on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def describe(holder: dict[str, Any]) -> str:
  """'host H, pid P, since T, last heartbeat N s ago' of a lock's contents."""
  age = max(_now() - float(holder.get('heartbeat', 0)), 0.0)
  return (
    f'host {holder.get("host")}, pid {holder.get("pid")}, since '
    f'{_stamp(float(holder.get("started", 0)))}, last heartbeat {age:.0f} s ago'
  )


def abandoned(holder: dict[str, Any]) -> bool:
  """Whether the run that wrote `holder` is gone (see the module docstring)."""
  if holder.get('host') == socket.gethostname():
    return not process_runs(int(holder.get('pid', -1)))
  return _now() - float(holder.get('heartbeat', 0)) > STALE_SECONDS


def read(workdir: str) -> dict[str, Any] | None:
  """The lock's contents, None if there is none (an unreadable lock reads as an abandoned one)."""
  try:
    with open(os.path.join(workdir, LOCK_FILE), encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {'host': '?', 'pid': -1, 'started': 0, 'heartbeat': 0}


class WorkdirLock:
  """The workdir's lock, held from `acquire` (or `with`) to `release`."""

  def __init__(self, workdir: str, *, say: Callable[[str], None] = print):
    self.workdir, self.say = workdir, say
    self.path = os.path.join(workdir, LOCK_FILE)
    self.token = uuid.uuid4().hex
    self.started = _now()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _contents(self) -> dict[str, Any]:
    return {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'started': self.started,
      'heartbeat': _now(),
      'token': self.token,
    }

  def acquire(self) -> None:
    """Takes the lock (creating the workdir if needed); raises WorkdirBusy if a live run holds it."""
    os.makedirs(self.workdir, exist_ok=True)
    for _ in range(10):  # a lost race for an abandoned lock is retried
      try:
        descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = read(self.workdir)
        if holder is None:
          continue
        if not abandoned(holder):
          raise WorkdirBusy(
            f'{self.workdir} is in use by another run ({describe(holder)}); wait for it to '
            'end or stop it (a run on another host is taken over after '
            f'{STALE_SECONDS / 60:.0f} minutes without a heartbeat)'
          ) from None
        self._take_over(holder)
        continue
      with os.fdopen(descriptor, 'w', encoding='utf-8') as f:
        json.dump(self._contents(), f)
      self._thread = threading.Thread(target=self._beat, name='workdir-lock', daemon=True)
      self._thread.start()
      return
    raise WorkdirBusy(f'{self.path}: could not be taken (other runs keep starting)')

  def _take_over(self, holder: dict[str, Any]) -> None:
    """Moves an abandoned lock out of the way (one rename: of two runs, one wins)."""
    aside = f'{self.path}.abandoned-{os.getpid()}'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return  # another run moved it first
    os.remove(aside)
    self.say(f'warning: taking over the lock of a run that is gone ({describe(holder)})')

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      if (read(self.workdir) or {}).get('token') != self.token:
        return  # taken over: never write someone else's lock
      try:
        _atomic.write_json(self.path, self._contents(), indent=None)
      except OSError:  # a full disk: the next beat tries again
        continue

  def release(self) -> None:
    """Removes the lock if this run still holds it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if (read(self.workdir) or {}).get('token') == self.token:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


@contextlib.contextmanager
def held(workdir: str):
  """The workdir's lock for the run's life: process 0 holds it; the others learn whether it could
  be taken (and stop with it if not)."""
  import jax
  import numpy as np

  from transformer.parallel import distributed

  lock, problem = None, ''
  if jax.process_index() == 0:
    lock = WorkdirLock(workdir)
    try:
      lock.acquire()
    except WorkdirBusy as e:
      problem = str(e)
  busy = bool(distributed.process_zero_value(np.asarray(bool(problem))))
  if busy and not problem:
    problem = f'{workdir}: process 0 could not lock the workdir (another run holds it)'
  if problem:
    raise WorkdirBusy(problem)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
