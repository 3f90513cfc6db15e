"""Where a run reports: stdout progress lines, metrics.jsonl and TensorBoard, from process 0 only."""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger(__name__)


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files; prints messages.

  TensorBoard needs TensorFlow's summary writer (`flax.metrics.tensorboard`); on a JAX-only
  install the events are skipped with a warning and metrics.jsonl still has everything.
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tensorboard = None
    if not enabled:
      return
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    try:
      from flax.metrics import tensorboard  # imports TensorFlow
      self._tensorboard = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError as e:
      log.warning('no TensorBoard events (%s); metrics.jsonl has the same numbers', e)

  def say(self, message: str) -> None:
    if self.enabled:
      print(message, flush=True)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'time': time.time(), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tensorboard is not None:
      for name, value in scalars.items():
        self._tensorboard.scalar(name, float(value), step)
      self._tensorboard.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tensorboard is not None:
      self._tensorboard.close()
