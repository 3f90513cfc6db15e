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

import dataclasses
import math
import os
import signal
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
  training,
  workdir as workdir_lib,
)
from transformer.input_pipeline.corpus import DataError
from transformer.metrics_writer import MetricWriter
from transformer.model import Transformer, TransformerConfig, count_params
from transformer.run_config import ConfigError, model_config, optimizer_for, validate_config

# Errors a user causes (config, data, workdir); train.py reports them in one line.
USER_ERRORS = (ConfigError, DataError, checkpoints.CheckpointError)

# The exit status of a run stopped by SIGTERM after saving its checkpoint (EX_TEMPFAIL: "try
# again"), so that a scheduler can tell a preempted run from a finished one.
PREEMPTED_EXIT_STATUS = 75


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
  schedule: Callable
  train_step: Callable
  eval_step: Callable
  batches: Any  # the prefetching training iterator (saved in checkpoints)
  checkpointer: checkpoints.Checkpointer
  evaluator: evaluation.Evaluator
  evaluation_due: bool = False  # the restored step was due to evaluate but was preempted first

  def say(self, message: str) -> None:
    self.writer.say(message)

  def eval_model(self, params: Any) -> Transformer:
    model = nnx.merge(self.graphdef, params, self.rngs)
    model.eval()
    return model


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the workdir if it has checkpoints), evaluates, tests.

  Returns the results written to results.json, or `{'preempted_at_step': N}` after a SIGTERM.
  Raises ConfigError (or a data error) before anything is written if the config, the data or
  the workdir cannot be used.
  """
  run = set_up(config, workdir)
  try:
    outcome = train(run)
    if 'preempted_at_step' in outcome:
      return outcome
    results = {**test(run), **outcome}
    if jax.process_index() == 0:
      workdir_lib.write_json_atomically(os.path.join(workdir, 'results.json'), results)
    run.say(f'results: {results}')
    return results
  finally:
    run.checkpointer.close()
    run.writer.close()


# ---------------------------------------------------------------------------------------------
# Set-up.


def set_up(asked: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config as asked, the workdir and every data split, then builds the run (and
  restores it) with the resolved config: `asked` with what it left to the data chosen."""
  from transformer import run_data  # grain and TFDS: training only

  validate_config(asked)
  parallel = parallel_lib.make(asked.parallelism)
  _check_batch_sizes(asked, parallel.num_replicas)
  warnings = workdir_lib.check_resume(asked, workdir)
  data = run_data.prepare(asked, workdir)  # every split read and checked; tokenizer ready
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
  host_state, start_step, evaluation_due = _restore(checkpointer, host_state, batches, writer.say)
  train_step, eval_step = _compile_steps(resolved, parallel, graphdef, optimizer)
  evaluator = evaluation.Evaluator(
    data.tokenizer,
    alpha=resolved.length_penalty,
    batch_size=resolved.decode_batch_size,
    extra_length=resolved.decode_extra_length,
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
    schedule=schedule,
    train_step=train_step,
    eval_step=eval_step,
    batches=Prefetcher(batches, parallel.device_batch),
    checkpointer=checkpointer,
    evaluator=evaluator,
    evaluation_due=evaluation_due,
  )


def _build_model(
  config: ml_collections.ConfigDict, tokenizer, workdir: str
) -> tuple[TransformerConfig, Transformer]:
  """The model the run trains (recorded in model.json): from the run config and the tokenizer,
  or, with `config.init_from`, the pretrained Marian model's configuration and weights."""
  if config.init_from:
    from transformer import marian

    pretrained, _ = marian.load(config.init_from, dtype=config.model.dtype)
    mconfig = pretrained.config
  else:
    mconfig = model_config(config, tokenizer.vocab_size, **tokenizer.special_ids)
  workdir_lib.save_model_config(mconfig, workdir)
  model = training.create_model(mconfig, config.seed)
  if config.init_from:
    nnx.update(model, nnx.state(pretrained, nnx.Param))
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


def _restore(
  checkpointer: checkpoints.Checkpointer, host_state: Any, batches: Any, say: Callable[[str], None]
) -> tuple[Any, int, bool]:
  """(state, step, whether that step's evaluation is still due) from the newest readable
  checkpoint, with the data iterator moved to its saved position; the fresh state if none."""
  try:
    restored = checkpointer.restore(host_state, with_data=True)
  except checkpoints.CheckpointMismatch as e:
    raise ConfigError(str(e)) from None
  if restored is None:
    return host_state, 0, False
  note = batches.restore(restored.data)
  say(f'resumed from checkpoint at step {restored.step}')
  if note:
    say(note)
  return restored.state, restored.step, bool(restored.metadata.get('evaluation_due'))


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
  """Steps from the restored step to `num_train_steps`, validating and checkpointing on the way.

  Returns the last validation metrics, the step, the loop's minutes and the last training loss;
  or `{'preempted_at_step': step}` when SIGTERM stopped the run (after saving a checkpoint).
  """
  config = run.config
  meter = _meter(run)
  stop = StopSignals(config.max_train_minutes)
  progress = Progress(run.start_step, best_bleu=run.checkpointer.best_bleu())
  if run.evaluation_due:  # a SIGTERM came before this step's evaluation
    if progress.validated(validate(run, progress.step)):
      _save(run, progress.step, bleu=progress.best_bleu, best=True, force=True)
  try:
    while progress.step < config.num_train_steps:
      local_batch, batch = run.batches.next()
      run.state, metrics = run.train_step(run.state, run.rngs, batch)
      run.batches.prefetch()  # the next batch is read and sent while the step runs
      progress.step = step = progress.step + 1
      meter.count(local_batch)
      out_of_time = False
      if step % config.log_every == 0 or step == config.num_train_steps:
        progress.logged = _log(run, step, metrics, meter)
        out_of_time = stop.out_of_time(meter.minutes())
      due = step % config.eval_every == 0 or step == config.num_train_steps or out_of_time
      if stop.preempted(step):
        run.say(f'SIGTERM received: saving a checkpoint at step {step} before exiting')
        _save(run, step, force=True, evaluation_due=due)
        run.checkpointer.wait()
        return {'preempted_at_step': step}
      best = due and progress.validated(validate(run, step, progress.logged.get('loss')))
      if due:
        meter.restart()  # evaluation time is not training throughput
      if due or step % config.checkpoint_every == 0:
        _save(run, step, bleu=progress.validation.get('eval_bleu') if due else None, best=best)
      if out_of_time or (
        config.early_stopping_evals is not None and progress.stale >= config.early_stopping_evals
      ):
        run.say(
          f'stopping at step {step}: '
          + (
            f'the time budget of {config.max_train_minutes} minutes'
            if out_of_time
            else f'{progress.stale} validations without a better BLEU'
          )
        )
        break
  finally:
    stop.close()
  run.checkpointer.wait()
  return {
    'step': progress.step,
    'loop_minutes': meter.minutes(),
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
    budget_minutes=config.max_train_minutes,
  )
  run.say(f'MFU reference: {meter.peak / 1e9:,.1f} GFLOP/s ({meter.peak_source})')
  return meter


def _save(run: Run, step: int, **kwargs) -> None:
  run.checkpointer.save(step, run.parallel.host_state(run.state), run.batches, **kwargs)


def _log(run: Run, step: int, metrics: Any, meter: 'Meter') -> dict[str, float]:
  """Reads the step's metrics (the loop's only synchronisation) and prints the progress line."""
  values = run.parallel.metrics(metrics)
  rate = meter.report(step)
  lr = float(run.schedule(step - 1))
  if values['skipped']:
    run.say(f'step {step}: non-finite loss or gradient; the update was skipped')
  run.say(
    f'step {step:>6}/{run.config.num_train_steps} | loss {values["loss"]:.4f} | '
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


class StopSignals:
  """When to stop early, decided the same way on every host.

  SIGTERM: one process turns it into a flag; several processes use jax's preemption service
  (`reached_preemption_sync_point`), which agrees on the step at which all of them save. The time
  budget is read at log steps, where process 0's decision is broadcast to the others.
  """

  def __init__(self, budget_minutes: float):
    self.budget_minutes = budget_minutes
    self.multihost = jax.process_count() > 1
    self.requested = False
    # Several processes: jax's runtime owns SIGTERM (a Python handler would hide it from it).
    self._previous = None if self.multihost else signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.requested = True

  def preempted(self, step: int) -> bool:
    if self.multihost:
      from jax.experimental import multihost_utils

      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.requested

  def out_of_time(self, minutes: float) -> bool:
    late = bool(self.budget_minutes) and minutes >= self.budget_minutes
    if self.multihost:
      from jax.experimental import multihost_utils

      late = bool(multihost_utils.broadcast_one_to_all(np.asarray(late)))
    return late

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


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
  tokens = max(sums['tokens'], 1.0)
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
  bleu, signature, hypotheses = run.evaluator.bleu(model, pairs, config.eval_beam_size)
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
  """Test-set BLEU with each of `config.test_beam_sizes`, of the parameters that validated best:
  the best checkpoint, or the average of the last `average_last` checkpoints if it is better."""
  config = run.config
  params, description = _test_parameters(run)
  model = run.eval_model(params)
  pairs = run.data.test_pairs[: config.test_max_sentences]
  results: dict[str, Any] = {'test_parameters': description}
  run.say(f'testing the {description}')
  for beam in config.test_beam_sizes:
    bleu, signature, _ = run.evaluator.bleu(model, pairs, beam)
    name = 'greedy' if beam == 1 else f'beam{beam}'
    results[f'test_bleu_{name}'] = bleu
    run.say(f'test BLEU ({name}, {len(pairs)} sentences): {bleu:.2f}  [{signature}]')
  return results


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
    bleu, _, _ = run.evaluator.bleu(run.eval_model(average), pairs, run.config.eval_beam_size)
    average_lib.save_average(run.checkpointer, average, steps, bleu)
    run.say(f'average of steps {steps}: validation BLEU {bleu:.2f}')
    candidates.append((bleu, average, f'average of steps {steps} (validation BLEU {bleu:.2f})'))
  _, params, description = max(candidates, key=lambda c: c[0])
  return params, description
