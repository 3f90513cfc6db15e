"""Tiny training runs, shared by the end-to-end tests and `benchmarks.faults`: a local corpus cut
from the embedded one, tiny configs, the train.py command and what a run leaves in its workdir."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)  # the repository
EMBEDDED = os.path.join(ROOT, 'transformer', 'input_pipeline', 'data', 'bible_en_fr')


def write_tiny_corpus(folder: str, train: int = 400, eval_: int = 24) -> dict[str, str]:
  """TSV files with the first lines of the embedded splits."""
  os.makedirs(folder, exist_ok=True)
  files = {}
  for split, count in (('train', train), ('validation', eval_), ('test', eval_)):
    with gzip.open(os.path.join(EMBEDDED, f'{split}.tsv.gz'), 'rt', encoding='utf-8') as f:
      lines = [next(f) for _ in range(count + 1)]
    path = os.path.join(folder, f'{split}.tsv')
    with open(path, 'w', encoding='utf-8') as f:
      f.writelines(lines)
    files[split] = path
  return files


def tiny_overrides(files: dict[str, str], **extra) -> list[str]:
  """--config.* flags for a tiny model on the tiny corpus (a None value cannot be written as a
  flag: the config file's default stays)."""
  values = tiny_values(files)
  values.update(extra)
  return [f'--config.{k}={v}' for k, v in values.items() if v is not None]


def tiny_config(files: dict[str, str], **overrides):
  """configs/default.py with the tiny values (and `overrides`, dotted keys) set, as train.py
  would parse them."""
  from configs import default

  config = default.get_config()
  values = tiny_values(files)
  values.update(overrides)
  for key, value in values.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = eval(value) if isinstance(value, str) and value.startswith('(') else value
  return config


def tiny_values(files: dict[str, str]) -> dict:
  """Config values (dotted keys) of a tiny model on the tiny corpus."""
  return {
    'data_cache_dir': os.path.join(os.path.dirname(files['train']), 'prepared'),
    'dataset': 'local',
    'local_files.train': files['train'],
    'local_files.validation': files['validation'],
    'local_files.test': files['test'],
    'vocab_size': 500,
    'max_length': 80,
    'model.max_positions': 160,
    'model.d_model': 32,
    'model.num_heads': 2,
    'model.d_ff': 64,
    'model.num_encoder_layers': 1,
    'model.num_decoder_layers': 1,
    'batch_size': 8,
    'num_train_steps': 6,
    'warmup_steps': 10,
    'log_every': 2,
    'eval_every': 3,
    'checkpoint_every': 3,
    'bleu_sentences': 8,
    'eval_batch_size': 8,
    'decode_batch_size': 8,
    'test_beam_sizes': '(1,2)',
    'decode_extra_length': 8,
    'max_train_minutes': None,
    'num_samples': 1,
  }


def train_command(
  workdir: str, overrides: list[str], config: str = 'configs/default.py'
) -> list[str]:
  return [
    sys.executable,
    os.path.join(ROOT, 'train.py'),
    f'--workdir={workdir}',
    f'--config={config}',
    *overrides,
  ]


# The tests' programs are tiny and many, so compiling them is most of what the suite costs, and
# LLVM's optimisations cost more there than they save (tests/test_search.py: 199 -> 127 CPU s,
# docs/performance.md). The semantics do not change; timings live in benchmarks/, which compile
# as users do.
FAST_COMPILE = '--xla_backend_optimization_level=0'


def xla_flags(devices: int, fast_compile: bool = True) -> str:
  """The XLA flags of the tests' processes: `devices` simulated CPU devices, compiled fast
  unless a test compares numbers across device counts closer than the fast compile's rounding
  keeps them (`fast_compile=False`: as users compile)."""
  flags = f'--xla_force_host_platform_device_count={devices}'
  return f'{flags} {FAST_COMPILE}' if fast_compile else flags


def env(devices: int = 1, fast_compile: bool = True) -> dict[str, str]:
  environment = dict(os.environ)
  environment['XLA_FLAGS'] = xla_flags(devices, fast_compile)
  environment['JAX_PLATFORMS'] = 'cpu'
  environment['TF_CPP_MIN_LOG_LEVEL'] = '3'
  return environment


def run_train(
  workdir: str,
  overrides: list[str],
  devices: int = 1,
  check: bool = True,
  config: str = 'configs/default.py',
  fast_compile: bool = True,
) -> subprocess.CompletedProcess:
  result = subprocess.run(
    train_command(workdir, overrides, config),
    cwd=ROOT,
    env=env(devices, fast_compile),
    capture_output=True,
    text=True,
    timeout=900,
  )
  if check and result.returncode != 0:
    raise AssertionError(
      f'train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}'
    )
  return result


def metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def final_params(workdir: str):
  """The newest checkpoint's parameters as a flat {path: array} dict."""
  import numpy as np
  import orbax.checkpoint as ocp

  from transformer.training import checkpoints

  manager = ocp.CheckpointManager(
    os.path.join(workdir, 'checkpoints'), item_names=checkpoints.ITEMS
  )
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  manager.close()
  import jax

  flat = jax.tree_util.tree_flatten_with_path(restored['params'])[0]
  return step, {jax.tree_util.keystr(path): np.asarray(value) for path, value in flat}


def embedded_pairs(split: str, count: int) -> list[tuple[str, str]]:
  """The first `count` (English, French) pairs of an embedded split."""
  pairs = []
  with gzip.open(os.path.join(EMBEDDED, f'{split}.tsv.gz'), 'rt', encoding='utf-8') as f:
    header = next(f).rstrip('\n').split('\t')
    en, fr = header.index('en'), header.index('fr')
    for line, _ in zip(f, range(count)):
      fields = line.rstrip('\n').split('\t')
      pairs.append((fields[en], fields[fr]))
  return pairs
