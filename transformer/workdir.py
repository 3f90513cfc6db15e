"""A run directory: its config.json, the resume-compatibility check, its tokenizer, and loading
its trained model for inference.

    config.json        the run config, written once the run's inputs are checked
    model.json         the TransformerConfig the checkpoints hold
    tokenizer.model    the SentencePiece vocabulary (or tokenizer/, a pretrained Marian model's)
    checkpoints/ best/ see `transformer.checkpoints`

Loading for inference reads the parameters alone (no optimizer state), creates nothing in the
workdir, and imports neither the training loop, grain, TensorFlow nor optax.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from flax import nnx
import jax
import ml_collections

from transformer import checkpoints
from transformer.input_pipeline import tokenizer as tokenizer_lib
from transformer.model import Transformer, TransformerConfig, abstract_model
from transformer.run_config import ConfigError, model_config

CONFIG_FILE = 'config.json'
MODEL_FILE = 'model.json'
TOKENIZER_FILE = 'tokenizer.model'
PRETRAINED_TOKENIZER = 'tokenizer'  # a folder: the tokenizer of the model a run started from

# Config keys that fix what the checkpoints and the tokenizer mean: a resume must not change them.
INCOMPATIBLE_ON_RESUME = (
  'dataset',
  'source_lang',
  'target_lang',
  'vocab_size',
  'model',
  'seed',
  'local_files',
  'character_coverage',
  'init_from',
)
# Keys whose change a resume accepts but reports: they change the data the run sees from here on.
REPORTED_ON_RESUME = (
  'max_length',
  'pack',
  'overlong',
  'batch_size',
  'train_split',
  'lr_schedule',
  'warmup_steps',
  'learning_rate_scale',
)


# Earlier versions wrote "chosen for you" as numbers; they mean what None means now.
LEGACY_NUMBERS_FOR_NONE = {
  'vocab_size': 0,
  'model.dropout_rate': -1.0,
  'data_workers': -1,
  'bleu_sentences': 0,
  'test_max_sentences': 0,
  'eval_max_batches': 0,
  'max_epochs': 0,
  'max_train_minutes': 0.0,
  'early_stopping_evals': 0,
  'average_last': 0,
  'max_grad_norm': 0.0,
}


# Model fields that earlier versions wrote under another name.
RENAMED_MODEL_FIELDS = {'max_length': 'max_positions'}


def _renamed_model_fields(fields: dict[str, Any]) -> dict[str, Any]:
  return {RENAMED_MODEL_FIELDS.get(name, name): value for name, value in fields.items()}


def tokenizer_path(workdir: str, *, pretrained: bool | None = None) -> str:
  """Where the workdir's tokenizer is: a pretrained model's folder or a SentencePiece file
  (`pretrained=None`: whichever the workdir has)."""
  folder = os.path.join(workdir, PRETRAINED_TOKENIZER)
  if pretrained is None:
    pretrained = os.path.isdir(folder)
  return folder if pretrained else os.path.join(workdir, TOKENIZER_FILE)


def load_tokenizer(workdir: str):
  """The workdir's tokenizer: its SentencePiece model, or the pretrained model's tokenizer."""
  path = tokenizer_path(workdir)
  if os.path.isdir(path):
    from transformer import marian

    return marian.load_tokenizer(path)
  return tokenizer_lib.Tokenizer(path)


def save_model_config(config: TransformerConfig, workdir: str) -> None:
  """Writes model.json (process 0): what translate builds to restore the checkpoints into."""
  if jax.process_index() == 0:
    write_json_atomically(os.path.join(workdir, MODEL_FILE), dataclasses.asdict(config))


def _model_config(config: ml_collections.ConfigDict, workdir: str, tokenizer) -> TransformerConfig:
  path = os.path.join(workdir, MODEL_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      return TransformerConfig(**_renamed_model_fields(json.load(f)))
  # A dropout left to the data is resolved at training: only the written model config has it.
  if config.model.get('dropout_rate') is None:
    raise FileNotFoundError(f'{workdir} has no {MODEL_FILE} (training writes it with the model)')
  return model_config(config, tokenizer.vocab_size, **tokenizer.special_ids)  # older workdirs


def saved_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config a workdir was trained with, or None if it has none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path}: cannot be read ({e})') from e
  if isinstance(saved.get('model'), dict):
    saved['model'] = _renamed_model_fields(saved['model'])
  for dotted, legacy in LEGACY_NUMBERS_FOR_NONE.items():
    node, _, name = dotted.rpartition('.')
    fields = saved.get(node, {}) if node else saved
    if fields.get(name) == legacy:
      fields[name] = None
  return ml_collections.ConfigDict(saved)


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Refuses a config that changes what the workdir's checkpoints mean; returns warnings about
  allowed changes that alter the run. Writes nothing."""
  saved = saved_config(workdir)
  if saved is None:
    return []
  saved, current = saved.to_dict(), json.loads(config.to_json_best_effort())
  changed = [k for k in INCOMPATIBLE_ON_RESUME if saved.get(k) != current.get(k)]
  if changed:
    details = '; '.join(
      f'{k}: {saved.get(k)!r} in the workdir, {current.get(k)!r} now' for k in changed
    )
    raise ConfigError(
      f'{workdir} was trained with a different config ({details}). Use a new '
      '--workdir, or the original values.'
    )
  warnings = [
    f'warning: config.{k} changed from {saved.get(k)!r} to {current.get(k)!r} since the '
    'last run of this workdir; the run continues with the new value'
    for k in REPORTED_ON_RESUME
    if k in saved and saved.get(k) != current.get(k)
  ]
  if config.lr_schedule == 'linear' and saved.get('num_train_steps') != config.num_train_steps:
    warnings.append(
      f'warning: num_train_steps changed from {saved.get("num_train_steps")} to '
      f"{config.num_train_steps}; with lr_schedule='linear' the learning rate from the resumed "
      'step on follows the new decay line (it jumps), so this run differs from one trained '
      'with the new value from the start'
    )
  return warnings


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  write_json_atomically(
    os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json_best_effort())
  )


def write_json_atomically(path: str, value: Any) -> None:
  """Writes `value` as JSON to `path` through a temporary file and a rename: readers never see
  half a file."""
  temporary = f'{path}.tmp{os.getpid()}'
  with open(temporary, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2)
  os.replace(temporary, path)


def load_model(workdir: str, *, which: str = 'latest') -> tuple[Transformer, Any, int]:
  """The trained model (newest or best checkpoint) in eval mode, its tokenizer and its step.

  Raises:
    FileNotFoundError: not a workdir, or no checkpoint of `which`.
    ValueError: the checkpoint does not fit the model its config and tokenizer describe.
  """
  config = saved_config(workdir)
  if config is None:
    raise FileNotFoundError(f'{workdir} is not a training workdir (no {CONFIG_FILE})')
  tokenizer = load_tokenizer(workdir)
  mconfig = _model_config(config, workdir, tokenizer)
  graphdef, abstract_params, rest = abstract_model(mconfig)
  checkpointer = checkpoints.Checkpointer(workdir, keep_best=which == 'best', read_only=True)
  try:
    restored = checkpointer.restore(abstract_params, which=which, params_only=True)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f'{workdir} has no {which} checkpoint')
  model = nnx.merge(graphdef, restored.state, rest)
  model.eval()
  return model, tokenizer, restored.step
