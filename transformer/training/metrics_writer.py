"""Where a run reports: stdout progress lines, metrics.jsonl and TensorBoard, from process 0 only."""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger(__name__)


def _drop_partial_line(path: str) -> None:
  """Cuts the last line of `path` if a killed run left it half written (no newline at its end),
  so that the lines appended next stay one JSON record each."""
  try:
    with open(path, 'rb+') as f:
      data = f.read()
      if data and not data.endswith(b'\n'):
        f.truncate(data.rfind(b'\n') + 1)
  except FileNotFoundError:
    pass


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files; prints messages.

  TensorBoard events are written with TensorFlow's `tf.summary` (TensorFlow comes with the `data`
  extra); on a JAX-only install they are skipped with a warning and metrics.jsonl has everything.
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tensorboard = None
    if not enabled:
      return
    path = os.path.join(workdir, 'metrics.jsonl')
    _drop_partial_line(path)
    self._jsonl = open(path, 'a')
    try:
      import tensorflow as tf  # only for the event files

      tf.config.set_visible_devices([], 'GPU')  # the GPU belongs to JAX
      self._tf = tf
      self._tensorboard = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))
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
      with self._tensorboard.as_default():
        for name, value in scalars.items():
          self._tf.summary.scalar(name, float(value), step=int(step))
      self._tensorboard.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tensorboard is not None:
      self._tensorboard.close()
