"""The training loop, top to bottom: data, tokenizer, model, restore, steps, evaluation, checkpoints.

`train_and_evaluate(config, workdir)` is what `train.py` runs. The workdir holds everything a run
needs to resume or to translate: config.json, tokenizer.model, checkpoints/, best/, metrics.jsonl,
TensorBoard events, and results.json at the end.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
from flax import nnx

from transformer import checkpoints, evaluation, flops, training
# grain (pipeline) and TFDS (datasets) are imported where training needs them, so that loading a
# trained model for translation works on a JAX-only install.
from transformer.input_pipeline import tokenizer as tokenizer_lib
from transformer.metrics_writer import MetricWriter
from transformer.model import Transformer, TransformerConfig

log = logging.getLogger(__name__)

# Config keys that fix what the checkpoint and tokenizer mean: a resume must not change them.
INCOMPATIBLE_ON_RESUME = ('dataset', 'source_lang', 'target_lang', 'vocab_size', 'model', 'seed')


class ConfigError(ValueError):
  """The config is invalid or incompatible with the workdir."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad field; nothing runs on an invalid config."""
  from transformer.input_pipeline import pipeline
  for name in ('batch_size', 'num_train_steps', 'warmup_steps', 'log_every', 'eval_every',
               'checkpoint_every', 'keep_checkpoints', 'eval_batch_size', 'vocab_size',
               'max_length', 'grad_accum_steps', 'decode_batch_size'):
    value = config[name]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f'config.{name} must be a positive integer, got {value!r}')
  if config.overlong not in pipeline.OVERLONG_POLICIES:
    raise ConfigError(f'config.overlong must be one of {pipeline.OVERLONG_POLICIES}, got {config.overlong!r}')
  if config.parallelism not in training.PARALLELISMS:
    raise ConfigError(f'config.parallelism must be one of {training.PARALLELISMS}, got {config.parallelism!r}')
  if _lr_schedule(config) not in training.SCHEDULES:
    raise ConfigError(f'config.lr_schedule must be one of {training.SCHEDULES}, got {config.lr_schedule!r}')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f'config.label_smoothing must be in [0, 1), got {config.label_smoothing}')
  if config.eval_beam_size < 1 or any(b < 1 for b in config.test_beam_sizes):
    raise ConfigError('beam sizes must be >= 1')
  if config.model.max_length < config.max_length:
    raise ConfigError(f'config.model.max_length={config.model.max_length} must cover the data '
                      f'max_length={config.max_length}')
  try:
    model_config(config, vocab_size=config.vocab_size)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model: {e}') from e


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> TransformerConfig:
  return TransformerConfig(vocab_size=vocab_size, pad_id=tokenizer_lib.PAD_ID,
                           bos_id=tokenizer_lib.BOS_ID, eos_id=tokenizer_lib.EOS_ID,
                           **config.model.to_dict())


def _lr_schedule(config: ml_collections.ConfigDict) -> str:
  # Workdirs from before `lr_schedule` existed were trained with the paper's schedule.
  return config.get('lr_schedule', 'rsqrt')


def make_optimizer(config: ml_collections.ConfigDict, d_model: int):
  """The optimizer and learning-rate schedule that `config` describes."""
  return training.make_optimizer(d_model, config.warmup_steps, config.learning_rate_scale,
                                 max_grad_norm=config.max_grad_norm or None,
                                 schedule=_lr_schedule(config),
                                 total_steps=config.num_train_steps)


def _check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Saves config.json on the first run; on a resume, refuses a config that changes the model.

  Returns warnings about allowed changes that alter the run (to be logged).
  """
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json_best_effort())
  warnings = []
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    changed = [k for k in INCOMPATIBLE_ON_RESUME if saved.get(k) != current.get(k)]
    if changed:
      details = '; '.join(f'{k}: {saved.get(k)!r} in the workdir, {current.get(k)!r} now' for k in changed)
      raise ConfigError(f'{workdir} was trained with a different config ({details}). Use a new '
                        '--workdir, or the original values.')
    if (_lr_schedule(config) == 'linear'
        and saved.get('num_train_steps') != config.num_train_steps):
      warnings.append(
          f"warning: num_train_steps changed from {saved.get('num_train_steps')} to "
          f"{config.num_train_steps}; with lr_schedule='linear' the learning rate from the resumed "
          'step on follows the new decay line (it jumps), so this run differs from one trained '
          'with the new value from the start')
  if jax.process_index() == 0:
    with open(path + '.tmp', 'w') as f:
      json.dump(current, f, indent=2)
    os.replace(path + '.tmp', path)
  return warnings


def load_tokenizer(workdir: str) -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.Tokenizer(os.path.join(workdir, 'tokenizer.model'))


def load_model_from_workdir(workdir: str, *, which: str = 'latest') -> tuple[Transformer, tokenizer_lib.Tokenizer, int]:
  """The trained model (newest or best checkpoint), its tokenizer and step, for translation."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir} is not a training workdir (no config.json)')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  tokenizer = load_tokenizer(workdir)
  model = training.create_model(model_config(config, tokenizer.vocab_size), seed=0)
  optimizer, _ = make_optimizer(config, model.config.d_model)
  graphdef, host_state, rngs = training.init_train_state(model, optimizer, seed=0)
  checkpointer = checkpoints.Checkpointer(workdir, keep_best=True)
  try:
    restored = checkpointer.restore(checkpoints.abstract_host_state(host_state), None, which=which)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f'{workdir} has no {which} checkpoint')
  host_state, step = restored
  model = nnx.merge(graphdef, host_state.params, rngs)
  model.eval()
  return model, tokenizer, step


class _Preemption:
  """Turns SIGTERM into a flag checked between steps, so the loop saves before exiting."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _read(config: ml_collections.ConfigDict, split: str) -> tuple[list[tuple[str, str]], str]:
  """Raw text pairs of one split of the configured dataset, and what was read."""
  from transformer.input_pipeline import datasets
  return datasets.read_split(
      config.dataset, split, config.source_lang, config.target_lang,
      data_dir=config.tfds_data_dir or None, local_files=config.local_files.to_dict(),
      skip_malformed=config.skip_malformed)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the workdir if it has checkpoints), evaluates, returns final metrics."""
  from transformer.input_pipeline import pipeline
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  config_warnings = _check_workdir_config(config, workdir)
  is_lead = jax.process_index() == 0
  writer = MetricWriter(workdir, enabled=is_lead)
  say = writer.say
  for warning in config_warnings:
    say(warning)

  # Data and tokenizer.
  train_pairs, report = _read(config, config.train_split)
  tokenizer, trained_now = tokenizer_lib.load_or_train_tokenizer(
      os.path.join(workdir, 'tokenizer.model'),
      lambda: (text for pair in train_pairs for text in pair), vocab_size=config.vocab_size,
      character_coverage=config.character_coverage, max_sentences=config.vocab_max_sentences,
      seed=config.seed)
  say(f'tokenizer: {"trained" if trained_now else "reused"} {tokenizer.path} ({tokenizer.vocab_size} pieces)')
  tokenize = functools.partial(pipeline.tokenize_pairs, tokenizer=tokenizer,
                               max_length=config.max_length, overlong=config.overlong)
  train_data, stats = tokenize(train_pairs)
  say(f'train: {report}; {stats}')
  eval_pairs, report = _read(config, config.eval_split)
  eval_data, stats = tokenize(eval_pairs)
  say(f'validation: {report}; {stats}')

  # Model, optimizer, parallelism.
  mconfig = model_config(config, tokenizer.vocab_size)
  parallel = training.DataParallel(config.parallelism)
  if config.batch_size % (parallel.num_replicas * config.grad_accum_steps):
    raise ConfigError(f'config.batch_size={config.batch_size} must be divisible by replicas '
                      f'({parallel.num_replicas}) x grad_accum_steps ({config.grad_accum_steps})')
  if config.eval_batch_size % parallel.num_replicas:
    raise ConfigError(f'config.eval_batch_size={config.eval_batch_size} must be divisible by the '
                      f'{parallel.num_replicas} replicas')
  rows_per_host = config.batch_size // jax.process_count()
  model = training.create_model(mconfig, config.seed)
  optimizer, schedule = make_optimizer(config, mconfig.d_model)
  graphdef, host_state, rngs = training.init_train_state(model, optimizer, config.seed)
  say(f'model: {sum(x.size for x in jax.tree.leaves(host_state.params)):,} parameters; '
      f'{parallel.num_replicas} replica(s) ({config.parallelism}) on {jax.device_count()} device(s), '
      f'{jax.process_count()} process(es)')

  train_iter = iter(pipeline.train_dataset(
      train_data, batch_size=rows_per_host, max_length=config.max_length, seed=config.seed,
      pack=config.pack, shard_index=jax.process_index(), shard_count=jax.process_count()))
  checkpointer = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  restored = checkpointer.restore(checkpoints.abstract_host_state(host_state), train_iter)
  start_step = 0
  if restored is not None:
    host_state, start_step = restored
    say(f'resumed from checkpoint at step {start_step}')
  state = parallel.device_state(host_state)
  del host_state

  train_step = parallel.compile_train_step(training.make_train_step(
      graphdef, optimizer, label_smoothing=config.label_smoothing,
      grad_accum_steps=config.grad_accum_steps, axis_name=parallel.axis_name))
  eval_step = parallel.compile_eval_step(training.make_eval_step(graphdef, axis_name=parallel.axis_name))
  step_flops = flops.train_step_flops(mconfig, config.batch_size, config.max_length, config.max_length)
  peak, peak_source = flops.device_peak(mconfig.dtype)
  say(f'MFU reference: {peak / 1e9:.1f} GFLOP/s ({peak_source})')

  def eval_model(params) -> Transformer:
    m = nnx.merge(graphdef, params, rngs)
    m.eval()
    return m

  def evaluate(step: int) -> dict[str, float]:
    host = parallel.host_state(state)  # for decoding, which runs on one device
    sums = {'nll': 0.0, 'correct': 0.0, 'tokens': 0.0}
    eval_ds = pipeline.eval_dataset(eval_data, batch_size=config.eval_batch_size // jax.process_count(),
                                    max_length=config.max_length, shard_index=jax.process_index(),
                                    shard_count=jax.process_count())
    for index, batch in enumerate(eval_ds):
      if config.eval_max_batches and index >= config.eval_max_batches:
        break
      # state.params is already in the step's replicated layout: no round trip through the host.
      out = parallel.metrics(eval_step(state.params, rngs, parallel.device_batch(batch)))
      sums = {k: sums[k] + out[k] for k in sums}
    tokens = max(sums['tokens'], 1.0)
    metrics = {'eval_loss': sums['nll'] / tokens, 'eval_accuracy': sums['correct'] / tokens}
    metrics['eval_perplexity'] = math.exp(min(metrics['eval_loss'], 50.0))
    m = eval_model(host.params)
    count = config.bleu_sentences or len(eval_pairs)
    sources = [s for s, _ in eval_pairs[:count]]
    references = [t for _, t in eval_pairs[:count]]
    hypotheses = evaluation.translate(m, tokenizer, sources, beam_size=config.eval_beam_size,
                                      alpha=config.length_penalty, batch_size=config.decode_batch_size,
                                      extra_length=config.decode_extra_length, warn=say)
    bleu, signature = evaluation.corpus_bleu(hypotheses, references)
    metrics['eval_bleu'] = bleu
    say(f'eval step {step}: loss {metrics["eval_loss"]:.4f}, accuracy {metrics["eval_accuracy"]:.4f}, '
        f'perplexity {metrics["eval_perplexity"]:.2f}, BLEU {bleu:.2f} on {len(sources)} sentences '
        f'(beam {config.eval_beam_size}; {signature})')
    for src, hyp, ref in list(zip(sources, hypotheses, references))[:config.num_samples]:
      say(f'  source:     {src}\n  reference:  {ref}\n  hypothesis: {hyp}')
    writer.write(step, metrics)
    return metrics

  preemption = _Preemption()
  step = start_step
  window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
  run_start = time.perf_counter()
  last_metrics: dict[str, float] = {}
  eval_metrics: dict[str, float] = {}
  try:
    while step < config.num_train_steps:
      local_batch = next(train_iter)
      state, metrics = train_step(state, rngs, parallel.device_batch(local_batch))
      step += 1
      window_steps += 1
      window_tokens += pipeline.count_tokens(local_batch) * jax.process_count()
      if step % config.log_every == 0 or step == config.num_train_steps:
        last_metrics = parallel.metrics(metrics)
        elapsed = time.perf_counter() - window_start
        tokens_per_second = window_tokens / elapsed
        mfu = step_flops * window_steps / elapsed / peak if peak else float('nan')
        remaining = (config.num_train_steps - step) * elapsed / window_steps
        if config.max_train_minutes:
          remaining = min(remaining, 60 * config.max_train_minutes - (time.perf_counter() - run_start))
        lr = float(schedule(step - 1))
        if last_metrics['skipped']:
          say(f'step {step}: non-finite loss or gradient; the update was skipped')
        say(f'step {step:>6}/{config.num_train_steps} | loss {last_metrics["loss"]:.4f} | '
            f'lr {lr:.2e} | {tokens_per_second:,.0f} tok/s | MFU {100 * mfu:.1f}% | '
            f'ETA {_duration(remaining)}')
        writer.write(step, {'train_loss': last_metrics['loss'], 'learning_rate': lr,
                            'tokens_per_second': tokens_per_second, 'mfu': mfu,
                            'grad_norm': last_metrics['grad_norm']})
        window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
      out_of_time = config.max_train_minutes and (time.perf_counter() - run_start) / 60 >= config.max_train_minutes
      if out_of_time:
        say(f'time budget of {config.max_train_minutes} minutes reached at step {step}')
      if preemption.requested:
        say(f'SIGTERM received: saving a checkpoint at step {step} before exiting')
        checkpointer.save(step, parallel.host_state(state), train_iter, force=True)
        checkpointer.wait()
        return {'preempted_at_step': step}
      evaluate_now = step % config.eval_every == 0 or step == config.num_train_steps or out_of_time
      if evaluate_now:
        eval_metrics = evaluate(step)
        window_start = time.perf_counter()  # evaluation time is not training throughput
      if step % config.checkpoint_every == 0 or evaluate_now:
        checkpointer.save(step, parallel.host_state(state), train_iter,
                          bleu=eval_metrics.get('eval_bleu') if evaluate_now else None)
      if out_of_time:
        break
    checkpointer.wait()
    results = _test(config, tokenizer, eval_model(parallel.host_state(state).params), say)
    results.update({'step': step, 'loop_minutes': (time.perf_counter() - run_start) / 60,
                    **{k: v for k, v in eval_metrics.items()}, 'train_loss': last_metrics.get('loss')})
    if is_lead:
      with open(os.path.join(workdir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    say(f'results: {json.dumps(results)}')
    return results
  finally:
    preemption.restore()
    checkpointer.close()
    writer.close()


def _test(config, tokenizer, model: Transformer, say) -> dict[str, float]:
  """Test-set BLEU with each of `config.test_beam_sizes`."""
  pairs, _ = _read(config, config.test_split)
  if config.test_max_sentences:
    pairs = pairs[:config.test_max_sentences]
  sources, references = [s for s, _ in pairs], [t for _, t in pairs]
  results = {}
  for beam in config.test_beam_sizes:
    hypotheses = evaluation.translate(model, tokenizer, sources, beam_size=beam, alpha=config.length_penalty,
                                      batch_size=config.decode_batch_size,
                                      extra_length=config.decode_extra_length, warn=say)
    bleu, signature = evaluation.corpus_bleu(hypotheses, references)
    name = 'greedy' if beam == 1 else f'beam{beam}'
    results[f'test_bleu_{name}'] = bleu
    say(f'test BLEU ({name}, {len(sources)} sentences): {bleu:.2f}  [{signature}]')
  return results


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'
