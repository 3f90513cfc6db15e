"""A training run set up: the config checked against the devices, the data and its plan, the
model, optimizer and compiled steps, restored from the workdir's newest checkpoint (`set_up`);
`Run` is everything the loop (`transformer.training.loop`) and the evaluation need.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx
import jax
import ml_collections

from transformer.decoding.options import DecodingOptions
from transformer.model.encoder_decoder import Transformer, TransformerConfig, count_params
from transformer.parallel import strategies as parallel_lib
from transformer.training import (
  checkpoints,
  evaluation,
  recipe,
  step_time,
  steps as training,
  workdir as workdir_lib,
)
from transformer.training.config import (
  ConfigError,
  check_batch_sizes,
  mesh_of,
  model_config,
  optimizer_for,
)
from transformer.training.metrics_writer import MetricWriter
from transformer.training.prefetch import Prefetcher
from transformer.training.time_budget import BudgetedSchedule


@dataclasses.dataclass
class Run:
  """Everything the loop needs, built by `set_up`."""

  config: ml_collections.ConfigDict
  workdir: str
  writer: MetricWriter
  data: Any  # transformer.training.data.RunData
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
    from transformer.model import scanned

    model = nnx.merge(self.graphdef, params, self.rngs)
    model.eval()
    return scanned.unrolled(model)


def set_up(asked: ml_collections.ConfigDict, workdir: str, resume_warnings: list[str]) -> Run:
  """Checks every data split and the devices, then builds the run (and restores it) with the
  resolved config: `asked` (already validated, its resume accepted with `resume_warnings`) with
  what it left to the data chosen."""
  from transformer.training import data as run_data  # grain and TFDS: training only

  parallel = _parallelism(asked)
  data = run_data.prepare(asked, workdir)  # every split read and checked; tokenizer ready
  plan = _plan(asked, data, parallel, workdir)
  workdir_lib.save_config(asked, workdir)  # as asked (None where the data chooses)
  resolved = plan.resolve(asked)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
  for line in resume_warnings + plan.report + data.report:
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
  restored = _restore(checkpointer, parallel.restore_target(host_state), batches, writer.say)
  if restored is None:
    restored = checkpoints.Restored(host_state, 0)  # a fresh run
  train_step, eval_step = _compile_steps(resolved, parallel, graphdef, optimizer)
  evaluator = evaluation.Evaluator(
    data.tokenizer,
    DecodingOptions(
      length_penalty=resolved.length_penalty, extra_length=resolved.decode_extra_length
    ),
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
    state=parallel.device_state(restored.state),
    start_step=restored.step,
    learning_rate=BudgetedSchedule.of(resolved, schedule),
    train_step=train_step,
    eval_step=eval_step,
    batches=Prefetcher(batches, parallel.device_batch),
    checkpointer=checkpointer,
    evaluator=evaluator,
    evaluation_due=restored.record.evaluation_due,
    minutes_before=restored.record.loop_minutes,
    restored_train_loss=restored.record.train_loss,
  )


def _parallelism(asked: ml_collections.ConfigDict) -> parallel_lib.DataParallel:
  """The parallelism the config asks for, checked against the devices and the batch size."""
  try:
    parallel = parallel_lib.make(asked.parallelism, mesh=mesh_of(asked))
  except ValueError as e:  # a mesh that does not fit the devices
    raise ConfigError(f'config.{e}') from e
  check_batch_sizes(asked, parallel.num_replicas)
  return parallel


def _plan(
  asked: ml_collections.ConfigDict, data: Any, parallel: parallel_lib.DataParallel, workdir: str
) -> recipe.Plan:
  """The recipe's plan from the measured data and, where the budget sets the length of the run
  and the data the dropout (`recipe.needs_step_time`), the step time
  (`transformer.training.step_time`): the saved time of an earlier start, else a few steps of
  the model without dropout, timed."""
  if not recipe.needs_step_time(asked):
    return recipe.plan(asked, data.measured)

  def measure_now() -> float:
    probe = recipe.probe(asked, data.measured)
    mconfig, model = _build_model(probe, data.tokenizer, workdir)
    optimizer, _ = optimizer_for(probe, mconfig.d_model)
    graphdef, host_state, rngs = training.init_train_state(model, optimizer, probe.seed)
    train_step, _ = _compile_steps(probe, parallel, graphdef, optimizer)
    rows = probe.batch_size // jax.process_count()
    batch = step_time.full_rows(rows, probe.max_length, mconfig.vocab_size)
    return step_time.measure(parallel, train_step, host_state, rngs, batch)

  seconds, _ = step_time.saved_or_measured(workdir, measure_now)
  return recipe.plan(asked, data.measured, step_seconds=seconds)


def _build_model(
  config: ml_collections.ConfigDict, tokenizer, workdir: str
) -> tuple[TransformerConfig, Transformer]:
  """The model the run trains (recorded in model.json): from the run config and the tokenizer,
  or, with `config.init_from`, the pretrained (Marian or M2M100) model's configuration and
  weights."""
  if config.init_from:
    from transformer.pretrained import families as pretrained_lib

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
    from transformer.model import scanned

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


def _restore(
  checkpointer: checkpoints.Checkpointer,
  target: Any,
  batches: Any,
  say: Callable[[str], None],
) -> checkpoints.Restored | None:
  """The newest readable checkpoint restored into `target` (the parallelism's layout), with the
  data iterator moved to its saved position; None if there is none."""
  try:
    restored = checkpointer.restore(target)
  except checkpoints.CheckpointMismatch as e:
    raise ConfigError(str(e)) from None
  if restored is None:
    return None
  note = batches.restore(restored.data)
  say(f'resumed from checkpoint at step {restored.step}')
  if note:
    say(note)
  return restored
