"""What the progress line reports: training throughput (tokens/s), MFU and the time left."""

from __future__ import annotations

import math
import time

import jax
import numpy as np


class Meter:
  """Training throughput since the last report: tokens/s, MFU and the time left."""

  def __init__(
    self,
    step_flops: float,
    peak: float,
    peak_source: str,
    *,
    total_steps: int,
    minutes_before: float = 0.0,
  ):
    self.step_flops, self.peak, self.peak_source = step_flops, peak, peak_source
    self.total_steps, self.minutes_before = total_steps, minutes_before
    self.started = time.perf_counter()
    self.restart()

  def restart(self) -> None:
    self.window_start, self.tokens, self.steps = time.perf_counter(), 0, 0

  def count(self, local_batch: dict[str, np.ndarray]) -> None:
    """Adds one step of this host's batch (all hosts' tokens are counted as this host's × hosts)."""
    self.steps += 1
    self.tokens += jax.process_count() * int(
      (local_batch['inputs_segment_ids'] > 0).sum() + (local_batch['targets_segment_ids'] > 0).sum()
    )

  def minutes(self) -> float:
    """The training loop's minutes: those of the runs this one resumes, and this one's."""
    return self.minutes_before + (time.perf_counter() - self.started) / 60

  def report(self, step: int, seconds_left: float | None = None) -> dict[str, float]:
    """tokens/s and MFU over the window, and the ETA: the planned steps at the window's pace,
    or the time budget's `seconds_left` where that ends first; starts a new window."""
    elapsed = max(time.perf_counter() - self.window_start, 1e-9)
    remaining = (self.total_steps - step) * elapsed / max(self.steps, 1)
    if seconds_left is not None:
      remaining = min(remaining, seconds_left)
    rate = {
      'tokens_per_second': self.tokens / elapsed,
      'mfu': self.step_flops * self.steps / elapsed / self.peak if self.peak else float('nan'),
      'eta_seconds': remaining,
    }
    self.restart()
    return rate


def percent(fraction: float) -> str:
  return 'n/a' if math.isnan(fraction) else f'{100 * fraction:.1f}%'


def duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s'
