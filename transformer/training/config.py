"""What a run config (`configs/*.py`, an ml_collections ConfigDict) means: its checks, the model
config and the optimizer it describes.

`validate_config` runs before anything else and raises `ConfigError` naming the first bad field,
so nothing runs (and nothing is written) on an invalid config.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any

import ml_collections

from transformer.input_pipeline.pipeline import OVERLONG_POLICIES
from transformer.model.encoder_decoder import TransformerConfig
from transformer.parallel import sharding, strategies as parallel


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a numeric config field accepts: a number of `kind` with `low <= value` (`<` when
  `above`) and `value <= high`, or None where `none` says what None means (e.g. 'auto')."""

  kind: type
  low: float
  high: float | None = None
  above: bool = False
  none: str | None = None

  def problem(self, value: Any) -> str | None:
    """None if `value` is accepted, else what the field accepts."""
    if value is None and self.none:
      return None
    number = isinstance(value, self.kind) or (self.kind is float and isinstance(value, int))
    if number and not isinstance(value, bool):
      low_ok = value > self.low if self.above else value >= self.low
      if low_ok and (self.high is None or value <= self.high):
        return None
    return f'must be {self.describe()}, got {value!r}'

  def describe(self) -> str:
    what = 'an integer' if self.kind is int else 'a number'
    bound = f'{">" if self.above else ">="} {self.low}'
    if self.high is not None:
      bound += f' and <= {self.high}'
    return f'{what} {bound}' + (f', or None ({self.none})' if self.none else '')


# Every numeric field of a run config, with what it accepts (README: "Config reference").
RANGES = {
  'seed': Range(int, 0),
  'vocab_size': Range(int, 16, none='from the corpus: transformer/training/recipe.py'),
  'character_coverage': Range(float, 0.0, 1.0, above=True),
  'vocab_max_sentences': Range(int, 1),
  'max_length': Range(int, 2),
  'data_workers': Range(int, 0, none='auto: none on a CPU backend, half the cores otherwise'),
  'batch_size': Range(int, 1),
  'grad_accum_steps': Range(int, 1),
  'num_train_steps': Range(
    int, 1, none='as many as max_train_minutes allows, at most max_epochs passes'
  ),
  'max_epochs': Range(int, 1, none='no cap on the passes over the data'),
  'max_train_minutes': Range(float, 0.0, above=True, none='no time budget'),
  'warmup_steps': Range(int, 1),
  'learning_rate_scale': Range(float, 0.0, above=True),
  'label_smoothing': Range(float, 0.0, 0.999),
  'max_grad_norm': Range(float, 0.0, above=True, none='no clipping'),
  'log_every': Range(int, 1),
  'eval_every': Range(int, 1),
  'checkpoint_every': Range(int, 1),
  'keep_checkpoints': Range(int, 1),
  'early_stopping_evals': Range(int, 1, none='never stop early'),
  'average_last': Range(int, 1, none='no checkpoint averaging'),
  'eval_batch_size': Range(int, 1),
  'eval_max_batches': Range(int, 1, none='the whole validation split'),
  'bleu_sentences': Range(int, 1, none='every validation sentence'),
  'eval_beam_size': Range(int, 1),
  'test_max_sentences': Range(int, 1, none='the whole test split'),
  'length_penalty': Range(float, 0.0),
  'decode_extra_length': Range(int, 0),
  'decode_batch_size': Range(int, 1),
  'num_samples': Range(int, 0),
  'model.dropout_rate': Range(
    float, 0.0, 0.999, none='from the passes over the data: transformer/training/recipe.py'
  ),
}


class ConfigError(ValueError):
  """The config is invalid or incompatible with the workdir."""


def mesh_of(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """`config.mesh`, or the default mesh of a config written before it had one."""
  return tuple(config.get('mesh', sharding.DEFAULT_MESH))


def _check_parallelism(config: ml_collections.ConfigDict) -> None:
  """`config.parallelism` and `config.mesh` as `parallel.strategies.check` says; whether the mesh
  fits the devices is checked with them."""
  try:
    parallel.check(config.parallelism, mesh_of(config))
  except ValueError as e:
    raise ConfigError(f'config.{e}') from None


def check_batch_sizes(config: ml_collections.ConfigDict, replicas: int) -> None:
  """The batch sizes split evenly over `replicas` (known once the devices are: `set_up`)."""
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


def _check_budget(config: ml_collections.ConfigDict) -> None:
  """`num_train_steps=None` trains until the time budget ends, within the cap on passes."""
  if config.num_train_steps is None:
    for name in ('max_train_minutes', 'max_epochs'):
      if config.get(name) is None:
        raise ConfigError(
          f'config.num_train_steps=None trains until the time budget ends, within '
          f'max_epochs passes: it needs config.{name} (got None)'
        )


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad field."""
  from transformer.training import steps  # the schedules' names; optax is needed to train anyway

  for name, accepted in RANGES.items():
    problem = accepted.problem(_get(config, name))
    if problem:
      raise ConfigError(f'config.{name} {problem}')
  if any(not isinstance(b, int) or b < 1 for b in config.test_beam_sizes):
    raise ConfigError(f'config.test_beam_sizes must be integers >= 1, got {config.test_beam_sizes}')
  grid = config.get('length_penalty_grid') or ()
  if any(isinstance(a, bool) or not isinstance(a, (int, float)) or a < 0 for a in grid):
    raise ConfigError(f'config.length_penalty_grid must be numbers >= 0, got {grid}')
  if config.average_last and config.average_last > config.keep_checkpoints:
    raise ConfigError(
      f'config.average_last={config.average_last} needs config.keep_checkpoints >= it '
      f'(it is {config.keep_checkpoints})'
    )
  choices = {
    'overlong': OVERLONG_POLICIES,
    'lr_schedule': steps.SCHEDULES,
  }
  for name, allowed in choices.items():
    if config[name] not in allowed:
      raise ConfigError(f'config.{name} must be one of {allowed}, got {config[name]!r}')
  _check_parallelism(config)
  _check_budget(config)
  if config.source_lang == config.target_lang:
    raise ConfigError(
      f'config.source_lang and config.target_lang are both {config.source_lang!r}: a model '
      'translates between two languages'
    )
  if config.model.max_positions < config.max_length:
    raise ConfigError(
      f'config.model.max_positions={config.model.max_positions} must cover the data '
      f'max_length={config.max_length}'
    )
  try:  # the fields left to the data (None) are checked when they are resolved
    model_config(config, vocab_size=config.vocab_size or TransformerConfig.vocab_size)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model: {e}') from e
  if config.init_from:
    _check_pretrained(config)


def _check_pretrained(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError unless `init_from` is a Marian or M2M100 directory this package loads:
  its config and its tokenizer (for the run's language pair) are read as `pretrained.load`
  reads them."""
  from transformer.pretrained import families as pretrained, hf_bart

  try:
    pretrained.load_tokenizer(config.init_from, config.source_lang, config.target_lang)
  except (hf_bart.HuggingFaceError, OSError) as e:
    raise ConfigError(f'config.init_from={config.init_from!r}: {e}') from None


def check_paths(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ConfigError, one line, for a path of the run that is not what it must be: the
  workdir and the cache directory (directories this process can write, or creatable), the data
  files (regular, readable files) and the TFDS directory."""
  _check_writable_directory(workdir, 'the workdir')
  if config.dataset == 'local':
    from transformer.input_pipeline import corpus

    if config.data_cache_dir:
      _check_writable_directory(config.data_cache_dir, 'config.data_cache_dir')
    for split in (config.train_split, config.eval_split, config.test_split):
      spec = config.local_files.get(split)
      if spec:
        try:
          for path in corpus.local_files(spec, config.source_lang, config.target_lang):
            corpus.check_regular_file(path)
        except corpus.DataError as e:
          raise ConfigError(f'config.local_files.{split}: {e}') from None
  if config.tfds_data_dir and os.path.exists(config.tfds_data_dir):
    if not os.path.isdir(config.tfds_data_dir):
      raise ConfigError(f'config.tfds_data_dir={config.tfds_data_dir!r} is not a directory')


def _check_writable_directory(path: str, what: str) -> None:
  existing = path
  while not os.path.exists(existing):  # the nearest ancestor that exists must take the new one
    parent = os.path.dirname(os.path.abspath(existing))
    if parent == os.path.abspath(existing):
      break
    existing = parent
  if not os.path.isdir(existing):
    raise ConfigError(f'{what} {path}: {existing} is a file, not a directory')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f'{what} {path}: {existing} is not writable (permission denied)')


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  for part in dotted.split('.'):
    config = config[part]
  return config


def model_config(
  config: ml_collections.ConfigDict, vocab_size: int, **special_ids: int
) -> TransformerConfig:
  """The model a run config describes, for a vocabulary of `vocab_size` (and the tokenizer's
  `pad_id`/`bos_id`/`eos_id`, if given). A model field left to the data (None) takes
  `TransformerConfig`'s default: resolve the config first (`transformer.training.recipe`) to get its value."""
  fields = {k: v for k, v in config.model.to_dict().items() if v is not None}
  return TransformerConfig(vocab_size=vocab_size, **special_ids, **fields)


def optimizer_for(config: ml_collections.ConfigDict, d_model: int):
  """The optimizer and learning-rate schedule that `config` describes."""
  from transformer.training import steps  # optax: training only

  return steps.make_optimizer(
    d_model,
    config.warmup_steps,
    config.learning_rate_scale,
    max_grad_norm=config.max_grad_norm,
    schedule=config.lr_schedule,
    total_steps=config.num_train_steps,
  )


def nearest_keys(config: ml_collections.ConfigDict, key: str, count: int = 3) -> list[str]:
  """The config's dotted keys closest in spelling to `key` (for 'did you mean' messages)."""
  keys = []

  def walk(node, prefix):
    for name, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f'{prefix}{name}.')
      else:
        keys.append(f'{prefix}{name}')

  walk(config, '')
  return difflib.get_close_matches(key, keys, n=count, cutoff=0.5)


def reference_table() -> str:
  """The README's config reference: each numeric field and what it accepts, from `RANGES`."""
  rows = ['| field | accepts |', '| --- | --- |']
  rows += [f'| `{name}` | {accepted.describe()} |' for name, accepted in RANGES.items()]
  return '\n'.join(rows)
