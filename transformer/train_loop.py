"""The training loop, top to bottom: set-up, steps, evaluation, checkpoints, the final test.

`train_and_evaluate(config, workdir)` is what `train.py` runs:

    run = set_up(config, workdir)   data and tokenizer (every split checked first), model,
                                    optimizer, parallelism, restore from the newest checkpoint
    train(run)                      the step loop: log, validate, checkpoint, stop on SIGTERM or
                                    the time budget
    test(run)                       test-set BLEU with each of config.test_beam_sizes

The workdir holds everything a run needs to resume or to translate (see `transformer.workdir`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Callable

from flax import nnx
import jax
import ml_collections
import numpy as np

from transformer import (
  average as average_lib,
  checkpoints,
  evaluation,
  flops,
  parallel as parallel_lib,
  recipe,
  step_time,
  training,
  workdir as workdir_lib,
)
from transformer.decoding_options import DecodingOptions
from transformer.input_pipeline.corpus import DataError
from transformer.metrics_writer import MetricWriter
from transformer.model import Transformer, TransformerConfig, count_params
from transformer.run_config import (
  ConfigError,
  check_paths,
  model_config,
  optimizer_for,
  validate_config,
)
from transformer.stop_signals import EXIT_STATUS, StopSignals
from transformer.time_budget import BudgetedSchedule
from transformer.workdir_lock import WorkdirBusy, WorkdirLock

# Errors a user causes (config, data, workdir); train.py reports them in one line.
USER_ERRORS = (ConfigError, DataError, checkpoints.CheckpointError, WorkdirBusy)

# The exit status of a run stopped by SIGTERM after saving its checkpoint (EX_TEMPFAIL: "try
# again"), so that a scheduler can tell a preempted run from a finished one; Ctrl-C gives 130.
PREEMPTED_EXIT_STATUS = EXIT_STATUS['SIGTERM']


@dataclasses.dataclass
class Run:
  """Everything the loop needs, built by `set_up`."""

  config: ml_collections.ConfigDict
  workdir: str
  writer: MetricWriter
  data: Any  # transformer.run_data.RunData
  model_config: TransformerConfig
  parallel: parallel_lib.DataParallel
  graphdef: nnx.GraphDef
  rngs: Any  # the model's non-parameter state (dropout streams)
  state: Any  # TrainState in the parallel layout
  start_step: int
  learning_rate: BudgetedSchedule
  train_step: Callable
  eval_step: Callable
  batches: Any  # the prefetching training iterator (saved in checkpoints)
  checkpointer: checkpoints.Checkpointer
  evaluator: evaluation.Evaluator
  evaluation_due: bool = False  # the restored step was due to evaluate but was preempted first
  minutes_before: float = 0.0  # the loop's minutes in the runs this one resumes
  restored_train_loss: float | None = None  # the last training loss the resumed run logged

  def say(self, message: str) -> None:
    self.writer.say(message)

  def eval_model(self, params: Any) -> Transformer:
    """The model of `params` in eval mode, unrolled for decoding if it trains scanned."""
    from transformer import scanned

    model = nnx.merge(self.graphdef, params, self.rngs)
    model.eval()
    return scanned.unrolled(model)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the workdir if it has checkpoints), evaluates, tests.

  Returns the results written to results.json (a finished run's, unchanged, if the workdir holds
  one that `config` does not train further), or `{'preempted_at_step': N, 'signal': name}` after
  SIGTERM or Ctrl-C. Raises ConfigError (or a data error) before anything is written if the
  config, the data or the workdir cannot be used, and WorkdirBusy if another run holds it.
  """
  validate_config(config)
  check_paths(config, workdir)
  with _workdir_lock(workdir):
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
      results = {**test(run), **outcome}
      if jax.process_index() == 0:
        workdir_lib.write_json_atomically(os.path.join(workdir, workdir_lib.RESULTS_FILE), results)
      run.say(f'results: {results}')
      return results
    finally:
      run.checkpointer.close()
      run.writer.close()


@contextlib.contextmanager
def _workdir_lock(workdir: str):
  """The workdir's lock for the run's life: process 0 holds it; the others learn whether it could
  be taken (and stop with it if not)."""
  lock, problem = None, ''
  if jax.process_index() == 0:
    lock = WorkdirLock(workdir)
    try:
      lock.acquire()
    except WorkdirBusy as e:
      problem = str(e)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    busy = bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(problem))))
    if busy and not problem:
      problem = f'{workdir}: process 0 could not lock the workdir (another run holds it)'
  if problem:
    raise WorkdirBusy(problem)
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


# ---------------------------------------------------------------------------------------------
# Set-up.


def set_up(
  asked: ml_collections.ConfigDict, workdir: str, resume_warnings: list[str] | None = None
) -> Run:
  """Checks the config as asked, the workdir and every data split, then builds the run (and
  restores it) with the resolved config: `asked` with what it left to the data chosen."""
  from transformer import run_data  # grain and TFDS: training only

  validate_config(asked)
  parallel = _parallelism(asked)
  warnings = (
    workdir_lib.check_resume(asked, workdir) if resume_warnings is None else resume_warnings
  )
  data = run_data.prepare(asked, workdir)  # every split read and checked; tokenizer ready
  data = _planned_with_step_time(asked, data, parallel, workdir)
  workdir_lib.save_config(asked, workdir)  # as asked (None where the data chooses)
  resolved = data.config
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  for line in warnings + data.report:
    writer.say(line)
  mconfig, model = _build_model(resolved, data.tokenizer, workdir)
  optimizer, schedule = optimizer_for(resolved, mconfig.d_model)
  graphdef, host_state, rngs = training.init_train_state(model, optimizer, resolved.seed)
  writer.say(
    f'model: {count_params(model):,} parameters; {parallel.num_replicas} replica(s) '
    f'({parallel.name}) on {jax.device_count()} device(s), {jax.process_count()} process(es)'
  )
  checkpointer = checkpoints.Checkpointer(workdir, keep=resolved.keep_checkpoints)
  batches = data.train_batches()
  host_state, start_step, metadata = _restore(
    checkpointer, host_state, parallel.restore_target(host_state), batches, writer.say
  )
  train_step, eval_step = _compile_steps(resolved, parallel, graphdef, optimizer)
  evaluator = evaluation.Evaluator(
    data.tokenizer,
    DecodingOptions(alpha=resolved.length_penalty, extra_length=resolved.decode_extra_length),
    batch_size=resolved.decode_batch_size,
    warn=writer.say,
  )
  return Run(
    resolved,
    workdir,
    writer,
    data,
    mconfig,
    parallel,
    graphdef,
    rngs,
    state=parallel.device_state(host_state),
    start_step=start_step,
    learning_rate=_learning_rate(resolved, schedule),
    train_step=train_step,
    eval_step=eval_step,
    batches=Prefetcher(batches, parallel.device_batch),
    checkpointer=checkpointer,
    evaluator=evaluator,
    evaluation_due=bool(metadata.get('evaluation_due')),
    minutes_before=float(metadata.get('loop_minutes', 0.0)),
    restored_train_loss=metadata.get('train_loss'),
  )


def _parallelism(asked: ml_collections.ConfigDict) -> parallel_lib.DataParallel:
  """The parallelism the config asks for, checked against the devices and the batch size."""
  try:
    parallel = parallel_lib.make(asked.parallelism, mesh=asked.get('mesh', (-1, 1, 1)))
  except ValueError as e:  # a mesh that does not fit the devices
    raise ConfigError(f'config.mesh: {e}') from e
  _check_batch_sizes(asked, parallel.num_replicas)
  return parallel


def _planned_with_step_time(
  asked: ml_collections.ConfigDict, data: Any, parallel: parallel_lib.DataParallel, workdir: str
) -> Any:
  """`data` with the plan remade once the step time is known, where the budget sets the length
  of the run and the data the dropout (`transformer.step_time`): the saved time of an earlier
  start, else a few steps of the model without dropout, timed."""
  if not recipe.needs_step_time(asked):
    return data

  def measure_now() -> float:
    probe = ml_collections.ConfigDict(data.config.to_dict())
    probe.model.dropout_rate = 0.0  # timed without dropout
    mconfig, model = _build_model(probe, data.tokenizer, workdir)
    optimizer, _ = optimizer_for(probe, mconfig.d_model)
    graphdef, host_state, rngs = training.init_train_state(model, optimizer, probe.seed)
    train_step, _ = _compile_steps(probe, parallel, graphdef, optimizer)
    rows = probe.batch_size // jax.process_count()
    batch = step_time.full_rows(rows, probe.max_length, mconfig.vocab_size)
    return step_time.measure(parallel, train_step, host_state, rngs, batch)

  seconds, _ = step_time.saved_or_measured(workdir, measure_now)
  plan = recipe.length_and_dropout(asked, *data.plan_inputs, step_seconds=seconds)
  report = plan.report + data.report[len(plan.report) :]
  return dataclasses.replace(data, config=recipe.resolve(asked, plan), report=report)


def _build_model(
  config: ml_collections.ConfigDict, tokenizer, workdir: str
) -> tuple[TransformerConfig, Transformer]:
  """The model the run trains (recorded in model.json): from the run config and the tokenizer,
  or, with `config.init_from`, the pretrained (Marian or M2M100) model's configuration and
  weights."""
  if config.init_from:
    from transformer import pretrained as pretrained_lib

    pretrained, _ = pretrained_lib.load(
      config.init_from,
      source_lang=config.source_lang,
      target_lang=config.target_lang,
      dtype=config.model.dtype,
    )
    # How the layers run (not what they are) is the run's choice.
    how = {k: config.model.get(k) for k in ('remat', 'scan_layers') if config.model.get(k)}
    mconfig = pretrained.config.replace(**how)
  else:
    mconfig = model_config(config, tokenizer.vocab_size, **tokenizer.special_ids)
  workdir_lib.save_model_config(mconfig, workdir)
  model = training.create_model(mconfig, config.seed)
  if config.init_from:
    from transformer import scanned

    laid_out = scanned.scanned(pretrained) if mconfig.scan_layers else pretrained
    nnx.update(model, nnx.state(laid_out, nnx.Param))
  return mconfig, model


def _compile_steps(
  config: ml_collections.ConfigDict,
  parallel: parallel_lib.DataParallel,
  graphdef: nnx.GraphDef,
  optimizer: Any,
) -> tuple[Callable, Callable]:
  """The train and eval steps, compiled for `parallel`."""
  train_step = training.make_train_step(
    graphdef,
    optimizer,
    label_smoothing=config.label_smoothing,
    grad_accum_steps=config.grad_accum_steps,
    axis_name=parallel.axis_name,
  )
  eval_step = training.make_eval_step(
    graphdef, label_smoothing=config.label_smoothing, axis_name=parallel.axis_name
  )
  return parallel.compile_train_step(train_step), parallel.compile_eval_step(eval_step)


def _check_batch_sizes(config: ml_collections.ConfigDict, replicas: int) -> None:
  if config.batch_size % (replicas * config.grad_accum_steps):
    raise ConfigError(
      f'config.batch_size={config.batch_size} must be divisible by replicas '
      f'({replicas}) x grad_accum_steps ({config.grad_accum_steps})'
    )
  if config.eval_batch_size % replicas:
    raise ConfigError(
      f'config.eval_batch_size={config.eval_batch_size} must be divisible by the '
      f'{replicas} replicas'
    )


def _learning_rate(config: ml_collections.ConfigDict, schedule: Callable) -> BudgetedSchedule:
  return BudgetedSchedule(
    schedule,
    config.num_train_steps,
    budget_minutes=config.max_train_minutes,
    follows_budget=config.lr_schedule == 'linear' and config.max_train_minutes is not None,
  )


def _restore(
  checkpointer: checkpoints.Checkpointer,
  host_state: Any,
  target: Any,
  batches: Any,
  say: Callable[[str], None],
) -> tuple[Any, int, dict[str, Any]]:
  """(state, step, what the checkpoint recorded: `evaluation_due`, `loop_minutes`) from the
  newest readable checkpoint restored into `target` (the parallelism's layout), with the data
  iterator moved to its saved position; the fresh state if none."""
  try:
    restored = checkpointer.restore(target, with_data=True)
  except checkpoints.CheckpointMismatch as e:
    raise ConfigError(str(e)) from None
  if restored is None:
    return host_state, 0, {}
  note = batches.restore(restored.data)
  say(f'resumed from checkpoint at step {restored.step}')
  if note:
    say(note)
  return restored.state, restored.step, restored.metadata


# ---------------------------------------------------------------------------------------------
# The loop.


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
  config, learning_rate = run.config, run.learning_rate
  meter, stop = _meter(run), StopSignals()
  progress = Progress(
    run.start_step, best_bleu=run.checkpointer.best_bleu(), logged={'loss': run.restored_train_loss}
  )
  if run.evaluation_due:  # a SIGTERM came before this step's evaluation
    if progress.validated(validate(run, progress.step)):
      _save(run, progress.step, meter, bleu=progress.best_bleu, best=True, force=True)
  ended = None
  try:
    while ended is None and not learning_rate.finished(progress.step):
      local_batch, batch = run.batches.next()
      rate = learning_rate(progress.step)
      run.state, metrics = run.train_step(run.state, run.rngs, batch, rate)
      run.batches.prefetch()  # the next batch is read and sent while the step runs
      progress.step = step = progress.step + 1
      meter.count(local_batch)
      if step % config.log_every == 0 or learning_rate.finished(step):
        progress.logged = _log(run, step, metrics, meter, rate)
        _read_clock(run, step, meter, stop)
      last = learning_rate.finished(step)
      due = step % config.eval_every == 0 or last
      signal_name = stop.preempted(step)
      if signal_name:
        run.say(f'{signal_name} received: saving a checkpoint at step {step} before exiting')
        _save(run, step, meter, progress.logged.get('loss'), force=True, evaluation_due=due)
        run.checkpointer.wait()
        return {'preempted_at_step': step, 'signal': signal_name}
      best = due and progress.validated(validate(run, step, progress.logged.get('loss')))
      if due:
        meter.restart()  # evaluation time is not training throughput
      if due or step % config.checkpoint_every == 0:
        bleu = progress.validation.get('eval_bleu') if due else None
        _save(run, step, meter, progress.logged.get('loss'), bleu=bleu, best=best)
      if config.early_stopping_evals is not None and progress.stale >= config.early_stopping_evals:
        ended = f'early stopping: {progress.stale} validations without a better BLEU'
  finally:
    stop.close()
  return _outcome(run, progress, meter, ended or learning_rate.ended(progress.step))


def _read_clock(run: Run, step: int, meter: 'Meter', stop: StopSignals) -> None:
  """At a log step: the loop's minutes (agreed by every host) to the schedule, and, at the first
  one, how many of the planned steps the time budget fits."""
  minutes = stop.agreed_minutes(run.minutes_before + meter.minutes())
  run.learning_rate.observe(step, minutes)
  if step == run.start_step + run.config.log_every:
    estimate = run.learning_rate.estimate(step, minutes)
    if estimate:
      run.say(estimate)


def _outcome(run: Run, progress: Progress, meter: 'Meter', ended: str) -> dict[str, Any]:
  """What the loop returns once it ends (after every save is written)."""
  run.checkpointer.wait()
  if not progress.validation:  # resumed at its last step: the results are computed again
    progress.validated(validate(run, progress.step))
  run.say(f'stopping at step {progress.step}: {ended}')
  return {
    'step': progress.step,
    'planned_steps': run.learning_rate.total_steps,
    'ended': ended,
    'loop_minutes': run.minutes_before + meter.minutes(),
    **progress.validation,
    'train_loss': progress.logged.get('loss'),
  }


def _meter(run: Run) -> 'Meter':
  config = run.config
  step_flops = flops.train_step_flops(
    run.model_config, config.batch_size, config.max_length, config.max_length
  )
  meter = Meter(
    step_flops,
    *flops.device_peak(run.model_config.dtype, run.parallel.num_replicas),
    total_steps=config.num_train_steps,
    budget_minutes=(config.max_train_minutes or 0) - run.minutes_before,
  )
  run.say(f'MFU reference: {meter.peak / 1e9:,.1f} GFLOP/s ({meter.peak_source})')
  return meter


def _save(run: Run, step: int, meter: 'Meter', train_loss: float | None = None, **kwargs) -> None:
  minutes = run.minutes_before + meter.minutes()
  state = run.parallel.checkpoint_state(run.state)
  run.checkpointer.save(step, state, run.batches, minutes=minutes, train_loss=train_loss, **kwargs)


def _log(run: Run, step: int, metrics: Any, meter: 'Meter', lr: float) -> dict[str, float]:
  """Reads the step's metrics (the loop's only synchronisation) and prints the progress line."""
  values = run.parallel.metrics(metrics)
  rate = meter.report(step)
  if values['skipped']:
    run.say(f'step {step}: non-finite loss or gradient; the update was skipped')
  run.say(
    f'step {step:>6}/{run.learning_rate.total_steps} | loss {values["loss"]:.4f} | '
    f'lr {lr:.2e} | {rate["tokens_per_second"]:,.0f} tok/s | MFU {_percent(rate["mfu"])} | '
    f'ETA {_duration(rate["eta_seconds"])}'
  )
  run.writer.write(
    step,
    {'train_loss': values['loss'], 'learning_rate': lr, 'grad_norm': values['grad_norm'], **rate},
  )
  return values


def _percent(fraction: float) -> str:
  return 'n/a' if math.isnan(fraction) else f'{100 * fraction:.1f}%'


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s'


class Meter:
  """Training throughput since the last report: tokens/s, MFU and the time left."""

  def __init__(
    self,
    step_flops: float,
    peak: float,
    peak_source: str,
    *,
    total_steps: int,
    budget_minutes: float,
  ):
    self.step_flops, self.peak, self.peak_source = step_flops, peak, peak_source
    self.total_steps, self.budget_minutes = total_steps, budget_minutes
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
    return (time.perf_counter() - self.started) / 60

  def report(self, step: int) -> dict[str, float]:
    """tokens/s and MFU over the window, and the ETA; starts a new window."""
    elapsed = max(time.perf_counter() - self.window_start, 1e-9)
    remaining = (self.total_steps - step) * elapsed / max(self.steps, 1)
    if self.budget_minutes:
      remaining = min(remaining, 60 * (self.budget_minutes - self.minutes()))
    rate = {
      'tokens_per_second': self.tokens / elapsed,
      'mfu': self.step_flops * self.steps / elapsed / self.peak if self.peak else float('nan'),
      'eta_seconds': remaining,
    }
    self.restart()
    return rate


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


# ---------------------------------------------------------------------------------------------
# Evaluation.


def _eval_losses(run: Run) -> dict[str, float]:
  """Validation NLL per token, accuracy and perplexity (teacher forcing, no dropout)."""
  sums = {'nll': 0.0, 'correct': 0.0, 'tokens': 0.0, 'smoothed': 0.0}
  for batch in run.data.eval_batches(
    run.config.eval_batch_size // jax.process_count(), run.config.eval_max_batches or 0
  ):
    # state.params is already in the step's replicated layout: no round trip through the host.
    out = run.parallel.metrics(
      run.eval_step(run.state.params, run.rngs, run.parallel.device_batch(batch))
    )
    sums = {k: sums[k] + out[k] for k in sums}
  if not sums['tokens']:  # prepare() refuses such a split; a loss over no token is no number
    raise DataError('the validation batches hold no target token')
  tokens = sums['tokens']
  loss = sums['nll'] / tokens
  return {
    'eval_loss': loss,
    'eval_accuracy': sums['correct'] / tokens,
    'eval_perplexity': math.exp(min(loss, 50.0)),
    'eval_smoothed_loss': sums['smoothed'] / tokens,
  }


def validate(run: Run, step: int, train_loss: float | None = None) -> dict[str, float]:
  """Validation losses and BLEU (on `bleu_sentences` pairs) of the current parameters; prints
  them with the train/validation gap (both label-smoothed losses) so over-fitting shows."""
  config = run.config
  metrics = _eval_losses(run)
  pairs = run.data.validation_pairs[: config.bleu_sentences]
  model = run.eval_model(run.parallel.host_state(run.state.params))
  bleu, signature, hypotheses = run.evaluator.bleu(model, pairs, beam_size=config.eval_beam_size)
  metrics['eval_bleu'] = bleu
  run.say(
    f'eval step {step}: loss {metrics["eval_loss"]:.4f}, accuracy {metrics["eval_accuracy"]:.4f}, '
    f'perplexity {metrics["eval_perplexity"]:.2f}, BLEU {bleu:.2f} on {len(pairs)} sentences '
    f'(beam {config.eval_beam_size}; {signature})'
  )
  if train_loss is not None:
    gap = metrics['eval_smoothed_loss'] - train_loss
    run.say(
      f'  train/validation gap: training loss {train_loss:.4f}, validation loss '
      f'{metrics["eval_smoothed_loss"]:.4f} (label-smoothed both): {gap:+.4f}'
    )
  run.say(f'  training data read so far: {run.batches.iterator.stats}')
  for (source, reference), hypothesis in list(zip(pairs, hypotheses))[: config.num_samples]:
    run.say(f'  source:     {source}\n  reference:  {reference}\n  hypothesis: {hypothesis}')
  run.writer.write(step, metrics)
  return metrics


def test(run: Run) -> dict[str, Any]:
  """Test-set BLEU with each of `config.test_beam_sizes`, of the parameters that validated best
  (the best checkpoint, or the average of the last `average_last` checkpoints if it is better),
  each beam size with the length penalty that validated best (`choose_decoding`)."""
  config = run.config
  params, description = _test_parameters(run)
  model = run.eval_model(params)
  results: dict[str, Any] = {'test_parameters': description}
  run.say(f'testing the {description}')
  alphas = {str(beam): config.length_penalty for beam in config.test_beam_sizes}
  if config.get('length_penalty_grid'):
    decoding = _choose_decoding(run, model)
    alphas, results['decoding'] = decoding['length_penalties'], decoding
  pairs = run.data.test_pairs[: config.test_max_sentences]
  for beam in config.test_beam_sizes:
    alpha = alphas[str(beam)]
    bleu, signature, _ = run.evaluator.bleu(model, pairs, beam_size=beam, alpha=alpha)
    name = 'greedy' if beam == 1 else f'beam{beam}'
    results[f'test_bleu_{name}'] = bleu
    at = '' if beam == 1 else f', length penalty {alpha}'
    run.say(f'test BLEU ({name}{at}, {len(pairs)} sentences): {bleu:.2f}  [{signature}]')
  return results


def _choose_decoding(run: Run, model: Transformer) -> dict[str, Any]:
  """The beam size and length penalty that validate best (the configured penalty first, so it
  wins ties); said in the log and kept in results.json, where `translate` reads them."""
  config = run.config
  grid = [config.length_penalty] + [
    a for a in config.length_penalty_grid if a != config.length_penalty
  ]
  pairs = run.data.validation_pairs[: config.bleu_sentences]
  run.say(
    f'choosing the beam size {tuple(config.test_beam_sizes)} and length penalty {tuple(grid)} '
    f'on {len(pairs)} validation sentences'
  )
  decoding = evaluation.choose_decoding(
    run.evaluator, model, pairs, config.test_beam_sizes, grid, run.say
  )
  run.say(
    f'chosen: beam {decoding["beam_size"]}, length penalty {decoding["length_penalty"]} '
    f'(validation BLEU {decoding["validation_bleu"]:.2f}); translate uses them by default'
  )
  return decoding


def _test_parameters(run: Run) -> tuple[Any, str]:
  """(parameters, what they are) of the best validated candidate."""
  final = run.parallel.host_state(run.state.params)
  best = run.checkpointer.restore(final, which='best', params_only=True)
  if best is None:
    candidates = [(float('-inf'), final, 'final parameters')]
  else:
    bleu = best.metadata.get('metrics', {}).get('bleu', float('nan'))
    candidates = [
      (bleu, best.state, f'best checkpoint (step {best.step}, validation BLEU {bleu:.2f})')
    ]
  if run.config.average_last:
    average, steps = average_lib.average_checkpoints(
      run.checkpointer, final, run.config.average_last
    )
    pairs = run.data.validation_pairs[: run.config.bleu_sentences]
    bleu, _, _ = run.evaluator.bleu(
      run.eval_model(average), pairs, beam_size=run.config.eval_beam_size
    )
    average_lib.save_average(run.checkpointer, average, steps, bleu)
    run.say(f'average of steps {steps}: validation BLEU {bleu:.2f}')
    candidates.append((bleu, average, f'average of steps {steps} (validation BLEU {bleu:.2f})'))
  _, params, description = max(candidates, key=lambda c: c[0])
  return params, description
