"""Signals that stop a training run after it saves: SIGTERM (preemption) and Ctrl-C (SIGINT).

The loop asks `preempted(step)` after every step; a run told to stop saves a checkpoint and
exits (75 for SIGTERM, 130 for SIGINT, as shells report an interrupted command). A second Ctrl-C
aborts at once (KeyboardInterrupt), for a save that takes too long.

Several processes decide together: jax's preemption service (`reached_preemption_sync_point`)
agrees on the step at which all of them save after a SIGTERM, and a Ctrl-C (which reaches the
process in the terminal, not the others) is shared at log steps, where the processes also agree
on the clock: process 0's minutes are broadcast to the others.
"""

from __future__ import annotations

import signal

import jax
import numpy as np

from transformer.parallel import distributed

EXIT_STATUS = {'SIGTERM': 75, 'SIGINT': 130}


class StopSignals:
  """Installed for the loop's life (`close` puts the previous handlers back)."""

  def __init__(self):
    self.multihost = jax.process_count() > 1
    self.received: str | None = None
    self._shared: str | None = None
    # Several processes: jax's runtime owns SIGTERM (a Python handler would hide it from it).
    self._previous_term = None if self.multihost else signal.signal(signal.SIGTERM, self._term)
    self._previous_int = signal.signal(signal.SIGINT, self._interrupt)

  def _term(self, signum, frame) -> None:
    del signum, frame
    self.received = self.received or 'SIGTERM'

  def _interrupt(self, signum, frame) -> None:
    del frame
    if self.received == 'SIGINT':  # the second Ctrl-C: stop now, without saving
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    self.received = 'SIGINT'
    print('Ctrl-C: saving a checkpoint before exiting (Ctrl-C again to abort at once)', flush=True)

  def preempted(self, step: int) -> str | None:
    """The signal that stops the run after this step ('SIGTERM', 'SIGINT'), or None."""
    if not self.multihost:
      return self.received
    from jax.experimental import multihost_utils

    if multihost_utils.reached_preemption_sync_point(step):
      return 'SIGTERM'
    return self._shared

  def agreed_minutes(self, minutes: float) -> float:
    """Process 0's clock, the same on every process; shares a pending Ctrl-C as well."""
    if not self.multihost:
      return minutes
    from jax.experimental import multihost_utils

    minutes = float(distributed.process_zero_value(np.asarray(minutes, np.float64)))
    interrupted = multihost_utils.process_allgather(np.asarray(self.received == 'SIGINT'))
    if np.any(interrupted):
      self._shared = 'SIGINT'
    return minutes

  def close(self) -> None:
    if self._previous_term is not None:
      signal.signal(signal.SIGTERM, self._previous_term)
    if self._previous_int is not None:
      signal.signal(signal.SIGINT, self._previous_int)
