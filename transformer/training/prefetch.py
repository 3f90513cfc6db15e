"""The training batches one step ahead on the devices."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


class Prefetcher:
  """Keeps the next training batch on the devices while the current step runs.

  Its position (`get_state`) is that of the batches handed out by `next`, not of the prefetched
  one, so a checkpoint never skips a batch.
  """

  def __init__(self, iterator: Any, to_device: Callable[[dict[str, np.ndarray]], Any]):
    self.iterator, self.to_device = iterator, to_device
    self._pending = None
    self._state = iterator.get_state()

  def prefetch(self) -> None:
    if self._pending is None:
      local = next(self.iterator)
      self._pending = (local, self.to_device(local))

  def next(self) -> tuple[dict[str, np.ndarray], Any]:
    """(this host's batch as NumPy, the same batch in the step's device layout)."""
    self.prefetch()
    batch, self._pending = self._pending, None
    self._state = self.iterator.get_state()
    return batch

  def get_state(self) -> Any:
    return self._state
