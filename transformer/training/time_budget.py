"""A learning rate that follows a time budget, so that a run the budget cuts is still a finished one.

A run plans `total_steps` (`num_train_steps`, or what the recipe capped it to). With a time budget
(`max_train_minutes`) and the linear schedule, the decay is driven by how far the run is, in steps
or in time, whichever is further:

    position = max(step, total_steps · minutes / budget)
    lr       = min(warm-up(step), decay(position))     (training.linear_decay_schedule)

so where the planned steps fit in the budget nothing changes (position = step, the run is exactly
the one without a budget), and where they do not the learning rate reaches zero when the budget
ends: the run stops there, annealed. The rsqrt schedule has no end to anneal to: a budget that
binds cuts it, and the results say so.

Time is read at log steps only, where the processes of a multi-host run agree on it (process 0's
clock); between two readings the position advances at the rate the last window measured, and it
never moves back, so the learning rate only decreases after the warm-up and every process computes
the same learning rate at every step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable


@dataclasses.dataclass
class BudgetedSchedule:
  """Each step's learning rate, and when the run is over; see the module docstring.

  `schedule(count)` (or `schedule(count, position)` when `follows_budget`) is the config's
  schedule; `budget_minutes` None means no budget.
  """

  schedule: Callable[..., float]
  total_steps: int
  budget_minutes: float | None = None
  follows_budget: bool = False
  _clock_position: float = 0.0  # the position the clock gave at the last reading
  _time_position: float = 0.0  # the position the schedule used at the last reading ...
  _read_at_step: int = 0  # ... at this step
  _per_step: float = 0.0  # positions per step: the last window's pace, less what it ran ahead
  _minutes: float = 0.0

  @classmethod
  def of(cls, config, schedule: Callable[..., float]) -> BudgetedSchedule:
    """The schedule of a resolved run config: `num_train_steps` planned, `max_train_minutes`
    its budget, which the linear schedule follows (the rsqrt one has no end to anneal to)."""
    budget = config.max_train_minutes
    follows = config.lr_schedule == 'linear' and budget is not None
    return cls(schedule, config.num_train_steps, budget_minutes=budget, follows_budget=follows)

  def seconds_left(self, minutes: float) -> float | None:
    """Seconds of the budget left `minutes` into the run (resumes included), or None without a
    budget."""
    return None if self.budget_minutes is None else 60 * (self.budget_minutes - minutes)

  def observe(self, step: int, minutes: float) -> None:
    """A reading of the loop's clock (minutes since the run started, resumes included).

    The position never moves back: where the last window's pace (one with a validation pause,
    say) carried it past the clock, it stays there and the next window advances that much slower,
    so the learning rate only decreases after the warm-up and still reaches zero when the budget
    ends.
    """
    if self.budget_minutes is None:
      return
    clock = self.total_steps * minutes / self.budget_minutes
    window = step - self._read_at_step
    reached = self._by_time(step)
    if window > 0:
      ahead = max(reached - clock, 0.0)
      self._per_step = max(clock - self._clock_position - ahead, 0.0) / window
    self._clock_position, self._time_position = clock, max(clock, reached)
    self._read_at_step, self._minutes = step, minutes

  def position(self, step: int) -> float:
    """How far the run is, in planned steps (at most `total_steps`)."""
    if self.budget_minutes is None:
      return float(min(step, self.total_steps))
    return min(max(float(step), self._by_time(step)), float(self.total_steps))

  def _by_time(self, step: int) -> float:
    """The position the clock's readings give at `step`: the last one, advanced at its pace."""
    return self._time_position + self._per_step * max(step - self._read_at_step, 0)

  def __call__(self, count: int) -> float:
    """The learning rate of the update after `count` updates."""
    if self.follows_budget:
      return self.schedule(count, self.position(count))
    return self.schedule(count)

  def out_of_time(self) -> bool:
    return self.budget_minutes is not None and self._minutes >= self.budget_minutes

  def finished(self, step: int) -> bool:
    """Whether the run has nothing left to train after `step` updates."""
    if step >= self.total_steps:
      return True
    if self.follows_budget:
      return self.position(step) >= self.total_steps
    return self.out_of_time()

  def ended(self, step: int) -> str:
    """Why the run ended at `step` (for the log and results.json)."""
    if step >= self.total_steps:
      return f'finished the {self.total_steps} planned steps'
    minutes = f'{self.budget_minutes:g}'
    if self.follows_budget:
      return (
        f'the time budget of {minutes} minutes ended the run at step {step} of '
        f'{self.total_steps} planned; the learning rate followed the budget to zero'
      )
    return (
      f'cut by the time budget of {minutes} minutes at step {step} of {self.total_steps} '
      'planned (the rsqrt schedule does not anneal to a budget)'
    )

  def estimate(self, step: int, minutes: float) -> str | None:
    """A line saying how many of the planned steps the budget fits at the measured pace."""
    if self.budget_minutes is None or step <= 0 or minutes <= 0:
      return None
    fit = math.floor(step * self.budget_minutes / minutes)
    if fit >= self.total_steps:
      return None
    return (
      f'time budget: about {fit} of the {self.total_steps} planned steps fit in '
      f'{self.budget_minutes:g} minutes at {60 * minutes / step:.2f} s/step; '
      + (
        'the learning rate follows the budget'
        if self.follows_budget
        else 'the run will be cut (lr_schedule=rsqrt cannot follow it)'
      )
    )
