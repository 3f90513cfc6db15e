"""The training loop: `train_and_evaluate(config, workdir)` is what `train.py` runs.

    checks                the config, the paths, the workdir's lock and what a resume may change
    run = set_up(...)     data and tokenizer (every split checked first), the plan, model,
                          optimizer, parallelism, restore (`transformer.training.run`)
    train(run)            the step loop: log, validate, checkpoint, stop on SIGTERM, early or
                          when the schedule (the planned steps or the time budget) ends
    validation.test(run)  test-set BLEU with each of config.test_beam_sizes

The workdir holds everything a run needs to resume or to translate (see `transformer.training.workdir`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from transformer import _atomic
from transformer.input_pipeline.corpus import DataError
from transformer.model import flops
from transformer.training import checkpoints, validation, workdir as workdir_lib, workdir_lock
from transformer.training.config import ConfigError, check_paths, validate_config
from transformer.training.meter import Meter, duration, percent
from transformer.training.run import Run, set_up
from transformer.training.stop_signals import EXIT_STATUS, StopSignals

# Errors a user causes (config, data, workdir); train.py reports them in one line.
USER_ERRORS = (ConfigError, DataError, checkpoints.CheckpointError, workdir_lock.WorkdirBusy)

# The exit status of a run stopped by SIGTERM after saving its checkpoint (EX_TEMPFAIL: "try
# again"), so that a scheduler can tell a preempted run from a finished one; Ctrl-C gives 130.
PREEMPTED_EXIT_STATUS = EXIT_STATUS['SIGTERM']


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the workdir if it has checkpoints), evaluates, tests.

  Returns the results written to results.json (a finished run's, unchanged, if the workdir holds
  one that `config` does not train further), or `{'preempted_at_step': N, 'signal': name}` after
  SIGTERM or Ctrl-C. Raises ConfigError (or a data error) before anything is written if the
  config, the data or the workdir cannot be used, and WorkdirBusy if another run holds it.
  """
  validate_config(config)
  check_paths(config, workdir)
  with workdir_lock.held(workdir):
    resume_warnings = workdir_lib.check_resume(config, workdir)  # a changed config is refused first
    finished = workdir_lib.finished_results(config, workdir)
    if finished is not None:
      if jax.process_index() == 0:
        print(
          f'{workdir}: this run finished at step {finished.get("step")} '
          f'({finished.get("ended", "its planned steps")}); its results are in '
          f'{os.path.join(workdir, workdir_lib.RESULTS_FILE)} (give more num_train_steps to '
          'train on)'
        )
      return finished
    if jax.process_index() == 0:
      workdir_lib.remove_abandoned_temporaries(workdir)
    run = set_up(config, workdir, resume_warnings)
    try:
      outcome = train(run)
      if 'preempted_at_step' in outcome:
        return outcome
      results = {**validation.test(run), **outcome}
      if jax.process_index() == 0:
        _atomic.write_json(os.path.join(workdir, workdir_lib.RESULTS_FILE), results)
      run.say(f'results: {results}')
      return results
    finally:
      run.checkpointer.close()
      run.writer.close()


@dataclasses.dataclass
class Progress:
  """Where the loop stands: the step, the last logged and validated metrics, the best validation
  BLEU (the one place that decides which checkpoint is the best) and how many validations in a
  row have not beaten it (for early stopping)."""

  step: int
  best_bleu: float | None = None
  stale: int = 0
  logged: dict = dataclasses.field(default_factory=dict)
  validation: dict = dataclasses.field(default_factory=dict)

  def validated(self, metrics: dict[str, float]) -> bool:
    """Records a validation; returns whether its BLEU is the best so far."""
    self.validation = metrics
    if self.best_bleu is None or metrics['eval_bleu'] > self.best_bleu:
      self.best_bleu, self.stale = metrics['eval_bleu'], 0
      return True
    self.stale += 1
    return False


def train(run: Run) -> dict[str, Any]:
  """Steps from the restored step until the schedule says the run is over (the planned steps,
  or the time budget), validating and checkpointing on the way.

  Returns the last validation metrics, the step, the loop's minutes, the last training loss and
  why the run ended; or `{'preempted_at_step': step, 'signal': name}` when SIGTERM or Ctrl-C
  stopped the run (after saving a checkpoint).
  """
  meter, stop = _meter(run), StopSignals()
  progress = Progress(
    run.start_step, best_bleu=run.checkpointer.best_bleu(), logged={'loss': run.restored_train_loss}
  )
  if run.evaluation_due:  # a SIGTERM came before this step's evaluation
    if progress.validated(validation.validate(run, progress.step)):
      record = checkpoints.Record(bleu=progress.best_bleu)
      _save(run, progress.step, meter, record, best=True, force=True)
  ended = None
  try:
    while ended is None and not run.learning_rate.finished(progress.step):
      _step(run, progress, meter, stop)
      step, finished = progress.step, run.learning_rate.finished(progress.step)
      due = step % run.config.eval_every == 0 or finished
      signal_name = stop.preempted(step)
      if signal_name:
        return _preempted(run, progress, meter, signal_name, due)
      _validate_and_save(run, progress, meter, due)
      ended = _early_stop(run.config, progress)
  finally:
    stop.close()
  return _outcome(run, progress, meter, ended or run.learning_rate.ended(progress.step))


def _step(run: Run, progress: Progress, meter: Meter, stop: StopSignals) -> None:
  """One training step (the next batch prefetched while it runs); at a log step, the progress
  line and the clock."""
  local_batch, batch = run.batches.next()
  rate = run.learning_rate(progress.step)
  run.state, metrics = run.train_step(run.state, run.rngs, batch, rate)
  run.batches.prefetch()
  progress.step = step = progress.step + 1
  meter.count(local_batch)
  if step % run.config.log_every == 0 or run.learning_rate.finished(step):
    progress.logged = _log(run, step, metrics, meter, rate)
    _read_clock(run, step, meter, stop)


def _preempted(
  run: Run, progress: Progress, meter: Meter, signal_name: str, due: bool
) -> dict[str, Any]:
  """Saves the step (its evaluation left `due` for the resumed run) and says why the run stops."""
  step = progress.step
  run.say(f'{signal_name} received: saving a checkpoint at step {step} before exiting')
  record = checkpoints.Record(train_loss=progress.logged.get('loss'), evaluation_due=due)
  _save(run, step, meter, record, force=True)
  run.checkpointer.wait()
  return {'preempted_at_step': step, 'signal': signal_name}


def _validate_and_save(run: Run, progress: Progress, meter: Meter, due: bool) -> None:
  """At an evaluation step, validates (the best BLEU so far keeps its checkpoint as the best);
  there and every `checkpoint_every` steps, saves a checkpoint."""
  step = progress.step
  best = due and progress.validated(validation.validate(run, step, progress.logged.get('loss')))
  if due:
    meter.restart()  # evaluation time is not training throughput
  if due or step % run.config.checkpoint_every == 0:
    bleu = progress.validation.get('eval_bleu') if due else None
    record = checkpoints.Record(train_loss=progress.logged.get('loss'), bleu=bleu)
    _save(run, step, meter, record, best=best)


def _early_stop(config: ml_collections.ConfigDict, progress: Progress) -> str | None:
  """Why the run stops early (`early_stopping_evals` validations without a better BLEU), or None."""
  if config.early_stopping_evals is not None and progress.stale >= config.early_stopping_evals:
    return f'early stopping: {progress.stale} validations without a better BLEU'
  return None


def _read_clock(run: Run, step: int, meter: Meter, stop: StopSignals) -> None:
  """At a log step: the loop's minutes (agreed by every host) to the schedule, and, at the first
  one, how many of the planned steps the time budget fits."""
  minutes = stop.agreed_minutes(meter.minutes())
  run.learning_rate.observe(step, minutes)
  if step == run.start_step + run.config.log_every:
    estimate = run.learning_rate.estimate(step, minutes)
    if estimate:
      run.say(estimate)


def _outcome(run: Run, progress: Progress, meter: Meter, ended: str) -> dict[str, Any]:
  """What the loop returns once it ends (after every save is written)."""
  run.checkpointer.wait()
  if not progress.validation:  # resumed at its last step: the results are computed again
    progress.validated(validation.validate(run, progress.step))
  run.say(f'stopping at step {progress.step}: {ended}')
  return {
    'step': progress.step,
    'planned_steps': run.learning_rate.total_steps,
    'ended': ended,
    'loop_minutes': meter.minutes(),
    **progress.validation,
    'train_loss': progress.logged.get('loss'),
  }


def _meter(run: Run) -> Meter:
  config = run.config
  step_flops = flops.train_step_flops(
    run.model_config, config.batch_size, config.max_length, config.max_length
  )
  meter = Meter(
    step_flops,
    *flops.device_peak(run.model_config.dtype, run.parallel.num_replicas),
    total_steps=config.num_train_steps,
    minutes_before=run.minutes_before,
  )
  run.say(f'MFU reference: {meter.peak / 1e9:,.1f} GFLOP/s ({meter.peak_source})')
  return meter


def _save(
  run: Run,
  step: int,
  meter: Meter,
  record: checkpoints.Record,
  *,
  best: bool = False,
  force: bool = False,
) -> None:
  """Saves the run's state at `step` with `record` and the loop's minutes so far."""
  record = dataclasses.replace(record, loop_minutes=meter.minutes())
  state = run.parallel.checkpoint_state(run.state)
  run.checkpointer.save(step, state, run.batches, record=record, best=best, force=force)


def _log(run: Run, step: int, metrics: Any, meter: Meter, lr: float) -> dict[str, float]:
  """Reads the step's metrics (the loop's only synchronisation) and prints the progress line."""
  values = run.parallel.metrics(metrics)
  rate = meter.report(step, run.learning_rate.seconds_left(meter.minutes()))
  if values['skipped']:
    run.say(f'step {step}: non-finite loss or gradient; the update was skipped')
  run.say(
    f'step {step:>6}/{run.learning_rate.total_steps} | loss {values["loss"]:.4f} | '
    f'lr {lr:.2e} | {rate["tokens_per_second"]:,.0f} tok/s | MFU {percent(rate["mfu"])} | '
    f'ETA {duration(rate["eta_seconds"])}'
  )
  run.writer.write(
    step,
    {'train_loss': values['loss'], 'learning_rate': lr, 'grad_norm': values['grad_norm'], **rate},
  )
  return values
