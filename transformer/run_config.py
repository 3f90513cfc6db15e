"""What a run config (`configs/*.py`, an ml_collections ConfigDict) means: its checks, the model
config and the optimizer it describes.

`validate_config` runs before anything else and raises `ConfigError` naming the first bad field,
so nothing runs (and nothing is written) on an invalid config.
"""

from __future__ import annotations

import difflib
import os

import ml_collections

from transformer import parallel
from transformer.model import TransformerConfig
from transformer.recipe import AUTO_DROPOUT

OVERLONG_POLICIES = ('drop', 'truncate')
_NON_NEGATIVE_INTEGERS = (
  'vocab_size',
  'max_epochs',
  'early_stopping_evals',
  'average_last',
)  # 0: auto/off
_POSITIVE_INTEGERS = (
  'batch_size',
  'num_train_steps',
  'warmup_steps',
  'log_every',
  'eval_every',
  'checkpoint_every',
  'keep_checkpoints',
  'eval_batch_size',
  'max_length',
  'grad_accum_steps',
  'decode_batch_size',
)


class ConfigError(ValueError):
  """The config is invalid or incompatible with the workdir."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad field."""
  from transformer import training  # the schedules' names; optax is needed to train anyway

  for name in _POSITIVE_INTEGERS + _NON_NEGATIVE_INTEGERS:
    value, least = config[name], 0 if name in _NON_NEGATIVE_INTEGERS else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
      raise ConfigError(f'config.{name} must be an integer >= {least}, got {value!r}')
  if config.average_last > config.keep_checkpoints:
    raise ConfigError(f'config.average_last={config.average_last} needs config.keep_checkpoints >= it '
                      f'(it is {config.keep_checkpoints})')  # fmt: skip
  choices = {
    'overlong': OVERLONG_POLICIES,
    'parallelism': parallel.PARALLELISMS,
    'lr_schedule': training.SCHEDULES,
  }
  for name, allowed in choices.items():
    if config[name] not in allowed:
      raise ConfigError(f'config.{name} must be one of {allowed}, got {config[name]!r}')
  if not isinstance(config.data_workers, int) or config.data_workers < -1:
    raise ConfigError(f'config.data_workers must be -1 (auto) or >= 0, got {config.data_workers!r}')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f'config.label_smoothing must be in [0, 1), got {config.label_smoothing}')
  if config.eval_beam_size < 1 or any(b < 1 for b in config.test_beam_sizes):
    raise ConfigError('config.eval_beam_size and config.test_beam_sizes must be >= 1')
  if config.model.max_length < config.max_length:
    raise ConfigError(
      f'config.model.max_length={config.model.max_length} must cover the data '
      f'max_length={config.max_length}'
    )
  try:  # 'auto' values (vocab 0, dropout -1) are resolved later: check the rest with stand-ins
    checked = ml_collections.ConfigDict(config.to_dict())
    if checked.model.dropout_rate == AUTO_DROPOUT:
      checked.model.dropout_rate = 0.1
    model_config(checked, vocab_size=config.vocab_size or 32000)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model: {e}') from e
  if config.init_from and not os.path.exists(os.path.join(config.init_from, 'config.json')):
    raise ConfigError(
      f'config.init_from={config.init_from!r} is not a Hugging Face model directory (no config.json)'
    )


def model_config(
  config: ml_collections.ConfigDict, vocab_size: int, **special_ids: int
) -> TransformerConfig:
  """The model a run config describes, for a vocabulary of `vocab_size` (and the tokenizer's
  `pad_id`/`bos_id`/`eos_id`, if given)."""
  return TransformerConfig(vocab_size=vocab_size, **special_ids, **config.model.to_dict())


def make_optimizer(config: ml_collections.ConfigDict, d_model: int):
  """The optimizer and learning-rate schedule that `config` describes."""
  from transformer import training  # optax: training only

  return training.make_optimizer(
    d_model,
    config.warmup_steps,
    config.learning_rate_scale,
    max_grad_norm=config.max_grad_norm or None,
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
