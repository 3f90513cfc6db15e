"""A run directory: its config.json, the resume-compatibility check, its tokenizer, and loading
its trained model for inference.

    config.json        the run config, written once the run's inputs are checked
    model.json         the TransformerConfig the checkpoints hold
    tokenizer.model    the SentencePiece vocabulary (or tokenizer/, a pretrained Marian model's)
    checkpoints/ best/ see `transformer.training.checkpoints`

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

from transformer import _atomic
from transformer.input_pipeline import tokenizer as tokenizer_lib
from transformer.model.encoder_decoder import Transformer, TransformerConfig, abstract_model
from transformer.training import checkpoints, workdir_lock
from transformer.training.config import ConfigError, model_config

CONFIG_FILE = 'config.json'
RESULTS_FILE = 'results.json'
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
    from transformer.pretrained import families as pretrained

    config = saved_config(workdir)  # a many-to-many model's language pair is the run's
    languages = (config.source_lang, config.target_lang) if config is not None else (None, None)
    return pretrained.load_tokenizer(path, *languages)
  return tokenizer_lib.Tokenizer(path)


def save_model_config(config: TransformerConfig, workdir: str) -> None:
  """Writes model.json (process 0): what translate builds to restore the checkpoints into."""
  if jax.process_index() == 0:
    _atomic.write_json(os.path.join(workdir, MODEL_FILE), dataclasses.asdict(config))


def _model_config(config: ml_collections.ConfigDict, workdir: str, tokenizer) -> TransformerConfig:
  path = os.path.join(workdir, MODEL_FILE)
  if os.path.exists(path):
    try:
      with open(path, encoding='utf-8') as f:
        return TransformerConfig(**_renamed_model_fields(json.load(f)))
    except (OSError, ValueError, TypeError) as e:
      raise ConfigError(f'{path}: cannot be read as a model configuration ({e})') from None
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


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the workdir's checkpoints, oldest first (read-only: creates nothing)."""
  reader = checkpoints.Checkpointer(workdir, keep_best=False, read_only=True)
  try:
    return reader.all_steps()
  finally:
    reader.close()


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """Refuses a config that changes what the workdir's checkpoints mean; returns warnings about
  allowed changes that alter the run. A workdir whose run stopped before its first checkpoint
  holds nothing a new config must respect: its files are moved aside (`set_aside`) instead."""
  saved = saved_config(workdir)
  if saved is None:
    return []
  saved, current = saved.to_dict(), json.loads(config.to_json_best_effort())
  for values in (saved, current):  # how activations are kept changes no parameter
    values.get('model', {}).pop('remat', None)
  changed = [k for k in INCOMPATIBLE_ON_RESUME if saved.get(k) != current.get(k)]
  if changed and not checkpoint_steps(workdir):
    _everyone_here('an abandoned start found')  # every process has read the saved config
    folder = set_aside(workdir) if jax.process_index() == 0 else os.path.join(workdir, 'abandoned')
    _everyone_here('an abandoned start set aside')
    return [
      f'warning: {workdir} held a run that stopped before its first checkpoint, with another '
      f'config ({", ".join(changed)}); its files are moved to {folder} and the run starts afresh'
    ]
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


def _everyone_here(name: str) -> None:
  """A barrier of every process of a multi-host run (nothing on one host)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def set_aside(workdir: str) -> str:
  """Moves everything in the workdir but its lock into `workdir/abandoned/<n>`; returns it."""
  number = 1
  while os.path.exists(os.path.join(workdir, 'abandoned', str(number))):
    number += 1
  folder = os.path.join(workdir, 'abandoned', str(number))
  os.makedirs(folder)
  for name in os.listdir(workdir):
    if name not in ('abandoned', workdir_lock.LOCK_FILE):
      os.replace(os.path.join(workdir, name), os.path.join(folder, name))
  return folder


def finished_results(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """The results of a run that finished in this workdir and that `config` does not ask to train
  further (None: there is none, it was trained since, or the config asks for more steps)."""
  path = os.path.join(workdir, RESULTS_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  steps = checkpoint_steps(workdir)
  if not steps or steps[-1] != results.get('step'):
    return None
  planned = results.get('planned_steps', results.get('step'))
  if config.num_train_steps is not None and config.num_train_steps > planned:
    return None
  return results


def decoding_defaults(workdir: str) -> dict[str, Any]:
  """The beam size and length penalty (`beam_size`, `length_penalty`) the workdir's finished run chose
  on validation (results.json's `decoding`); {} where it chose none."""
  try:
    with open(os.path.join(workdir, RESULTS_FILE), encoding='utf-8') as f:
      chosen = json.load(f).get('decoding') or {}
  except (OSError, ValueError, AttributeError):
    return {}
  defaults = {}
  if isinstance(chosen.get('beam_size'), int) and chosen['beam_size'] >= 1:
    defaults['beam_size'] = chosen['beam_size']
  if isinstance(chosen.get('length_penalty'), (int, float)):
    defaults['length_penalty'] = float(chosen['length_penalty'])
  return defaults


def remove_abandoned_temporaries(workdir: str) -> list[str]:
  """Deletes the temporary files (`transformer._atomic`) that a killed process left in the
  workdir; returns their names."""
  removed = []
  for name in os.listdir(workdir) if os.path.isdir(workdir) else ():
    pid = _atomic.temporary_pid(name)
    if pid is not None and not workdir_lock.process_runs(pid):
      path = os.path.join(workdir, name)
      if os.path.isfile(path):
        os.remove(path)
        removed.append(name)
  return removed


DATA_FILE = 'data.json'


def check_data(identity: dict[str, str], workdir: str) -> None:
  """Refuses to resume on data other than the run's: the splits' content identities that the
  first run recorded in data.json (`record_data`)."""
  path = os.path.join(workdir, DATA_FILE)
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    saved = json.load(f)
  for split, value in saved.items():
    if split in identity and identity[split] != value:
      raise ConfigError(
        f'{workdir} was trained on other data: the {split} split is {identity[split]} now, '
        f'{value} when the run started (a file changed in place?). Use a new --workdir, or '
        'the original data'
      )


def record_data(identity: dict[str, str], workdir: str) -> None:
  """Writes data.json (process 0), once: what a resume must find the data to be."""
  path = os.path.join(workdir, DATA_FILE)
  if jax.process_index() == 0 and not os.path.exists(path):
    _atomic.write_json(path, identity)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  _atomic.write_json(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json_best_effort()))


def load_model(
  workdir: str, *, which: str = 'latest', unroll: bool = True
) -> tuple[Transformer, Any, int]:
  """The trained model (newest or best checkpoint) in eval mode, its tokenizer and its step;
  a model trained with scanned layers comes unrolled for decoding unless `unroll=False`.

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
    restored = checkpointer.restore_params(abstract_params, which=which)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f'{workdir} has no {which} checkpoint')
  model = nnx.merge(graphdef, restored.state, rest)
  model.eval()
  if unroll:
    from transformer.model import scanned

    model = scanned.unrolled(model)
  return model, tokenizer, restored.step


def load_model_or_pretrained(
  workdir: str | None,
  pretrained: str | None,
  *,
  which: str = 'latest',
  source_lang: str | None = None,
  target_lang: str | None = None,
) -> tuple[Transformer, Any, str]:
  """(model, tokenizer, what was loaded, in words) from a training workdir or, if `pretrained`
  is given, a Hugging Face Marian or M2M100 directory (a many-to-many model for the language
  pair given): what the translate and export commands load."""
  if pretrained:
    from transformer.pretrained import families as pretrained_lib

    model, tokenizer = pretrained_lib.load(
      pretrained, source_lang=source_lang, target_lang=target_lang
    )
    return model, tokenizer, f'pretrained model {pretrained}'
  model, tokenizer, step = load_model(workdir, which=which)
  return model, tokenizer, f'{which} checkpoint of {workdir} (step {step})'
