"""The learning rate that follows a time budget: unchanged where the plan fits, annealed to zero
at the budget's end where it does not, and the run's results say which."""

import os

import numpy as np
import pytest

from tests.helpers import tiny_run
from transformer.training import loop as train_loop, recipe, steps as training
from transformer.training.time_budget import BudgetedSchedule


def _linear():
  return training.linear_decay_schedule(64, warmup_steps=10, total_steps=100)


def test_a_budget_the_plan_fits_changes_no_learning_rate():
  schedule = _linear()
  budgeted = BudgetedSchedule(schedule, 100, budget_minutes=10.0, follows_budget=True)
  rates = []
  for step in range(100):
    if step % 10 == 0:
      budgeted.observe(step, minutes=step * 0.05)  # 5 minutes for the 100 steps
    rates.append(budgeted(step))
  assert rates == [schedule(step) for step in range(100)]
  assert not budgeted.finished(99) and budgeted.finished(100)
  assert budgeted.ended(100) == 'finished the 100 planned steps'


def test_a_budget_that_binds_anneals_to_zero_when_it_ends():
  budgeted = BudgetedSchedule(_linear(), 100, budget_minutes=10.0, follows_budget=True)
  rates, step = [], 0
  while not budgeted.finished(step):  # 0.25 minute per step: 40 steps fit in the budget
    if step % 5 == 0:
      budgeted.observe(step, minutes=step * 0.25)
    rates.append(budgeted(step))
    step += 1
  assert 38 <= step <= 42, step
  assert rates[-1] < 0.05 * max(rates)  # annealed, not cut at a high rate
  assert np.all(np.diff(rates[12:]) <= 1e-12)  # after the warm-up, it only decreases
  assert 'the time budget of 10 minutes ended the run at step' in budgeted.ended(step)
  assert 'followed the budget to zero' in budgeted.ended(step)


def test_between_readings_the_position_advances_at_the_measured_pace():
  budgeted = BudgetedSchedule(_linear(), 100, budget_minutes=10.0, follows_budget=True)
  budgeted.observe(10, minutes=2.0)  # 20% of the budget at step 10: position 20
  budgeted.observe(20, minutes=4.0)  # position 40, two positions per step
  assert budgeted.position(25) == pytest.approx(50.0)
  assert budgeted.position(20) == pytest.approx(40.0)


def test_a_pause_in_one_window_does_not_raise_the_learning_rate_in_the_next():
  budgeted = BudgetedSchedule(_linear(), 100, budget_minutes=10.0, follows_budget=True)
  rates, step, minutes = [], 0, 0.0
  while not budgeted.finished(step):  # 0.1 minute a step, and a 2-minute pause at step 40
    if step % 5 == 0:
      budgeted.observe(step, minutes)
    rates.append(budgeted(step))
    step, minutes = step + 1, minutes + 0.1 + (2.0 if step == 40 else 0.0)
  assert np.all(np.diff(rates[12:]) <= 1e-12), np.diff(rates[12:]).max()
  assert rates[-1] < 0.05 * max(rates)
  assert 78 <= step <= 82, step  # 80 steps fit: the pause is not counted twice


def test_rsqrt_cannot_follow_a_budget_and_says_it_was_cut():
  schedule = training.rsqrt_schedule(64, 10)
  budgeted = BudgetedSchedule(schedule, 100, budget_minutes=1.0, follows_budget=False)
  budgeted.observe(30, minutes=1.2)
  assert budgeted(31) == schedule(31) and budgeted.finished(31)
  assert budgeted.ended(31).startswith('cut by the time budget of 1 minutes at step 31 of 100')


def test_a_run_over_its_budget_ends_by_it_and_its_results_say_why(tmp_path):
  # How the learning rate anneals to the budget is for the tests above; this one is the loop's.
  corpus = tiny_run.write_tiny_corpus(str(tmp_path / 'corpus'), train=120, eval_=8)
  config = tiny_run.tiny_config(
    corpus,
    num_train_steps=100_000,
    max_epochs=None,
    max_train_minutes=0.1,
    eval_every=100_000,
    log_every=2,
  )
  results = train_loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert 0 < results['step'] < 100_000 and results['planned_steps'] == 100_000
  assert 'the time budget of 0.1 minutes ended the run' in results['ended']
  assert results['loop_minutes'] >= 0.1


def test_a_run_the_budget_ends_times_its_steps_and_plans_its_dropout_from_them(tmp_path, capsys):
  """`num_train_steps=None`: the run times its step, plans the passes the budget allows (dropout
  by them), trains until the budget ends, and keeps the time for a resume."""
  import json
  import os

  corpus = tiny_run.write_tiny_corpus(str(tmp_path / 'corpus'), train=120, eval_=8)
  config = tiny_run.tiny_config(
    corpus,
    num_train_steps=None,
    max_epochs=1000,
    max_train_minutes=0.1,
    eval_every=100_000,
    **{'model.dropout_rate': None},
  )
  workdir = str(tmp_path / 'run')
  results = train_loop.train_and_evaluate(config, workdir)
  assert 'the time budget of 0.1 minutes ended the run' in results['ended']
  seconds = json.load(open(os.path.join(workdir, 'step_time.json')))['seconds_per_step']
  assert 0 < seconds < 6
  log = capsys.readouterr().out
  expected = min(int(6 / seconds), results['planned_steps'])
  assert f'about {expected:,} at {seconds:.3f} s a step (measured)' in log
  passes = expected / (results['planned_steps'] / 1000)  # the cap is 1,000 passes
  assert f'dropout {recipe.dropout_for(passes)} (auto: {passes:.1f} passes' in log
  assert 0 < results['step'] <= results['planned_steps']


def test_a_resumed_run_plans_with_the_step_time_of_its_first_start(tmp_path):
  from transformer.training import step_time

  calls = []
  measure = lambda: calls.append(1) or 0.25
  assert step_time.saved_or_measured(str(tmp_path), measure) == (0.25, True)
  assert step_time.saved_or_measured(str(tmp_path), lambda: 9.0) == (0.25, False)
  assert calls == [1]
  (tmp_path / step_time.FILE).write_text('{"seconds_per_step": ')  # torn: measured again
  assert step_time.saved_or_measured(str(tmp_path), lambda: 0.5) == (0.5, True)


def test_a_step_time_write_a_kill_interrupts_is_cleaned_up_by_the_next_run(tmp_path, monkeypatch):
  """step_time.json is written as every workdir file is (`transformer._atomic`): a writer killed
  between the write and the rename leaves `step_time.json.tmp<pid>`, which the next run removes."""
  from transformer import _atomic
  from transformer.training import step_time, workdir as workdir_lib

  def killed(source, destination):  # SIGKILL after the write: no rename, no clean-up
    raise SystemExit

  monkeypatch.setattr(_atomic.os, 'replace', killed)
  monkeypatch.setattr(_atomic.os, 'remove', lambda path: None)
  with pytest.raises(SystemExit):
    step_time.saved_or_measured(str(tmp_path), lambda: 0.25)
  monkeypatch.undo()
  [left] = os.listdir(tmp_path)
  assert _atomic.temporary_pid(left) == os.getpid()
  dead = left.replace(str(os.getpid()), '999999999')  # as if its writer were gone
  os.rename(tmp_path / left, tmp_path / dead)
  assert workdir_lib.remove_abandoned_temporaries(str(tmp_path)) == [dead]
  assert os.listdir(tmp_path) == []
