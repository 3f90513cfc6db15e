"""The training loop in-process: what happens around preemption, damage and resumption."""

import json
import os

import pytest

from tests.helpers import tiny_run
from transformer.training import loop as train_loop


@pytest.fixture
def corpus(tmp_path):
  return tiny_run.write_tiny_corpus(str(tmp_path / 'corpus'), train=120, eval_=8)


def _evaluated_steps(workdir):
  return [r['step'] for r in tiny_run.metrics(workdir) if 'eval_bleu' in r]


def test_a_sigterm_before_a_due_evaluation_evaluates_on_resume(tmp_path, corpus, monkeypatch):
  workdir = str(tmp_path / 'run')
  config = tiny_run.tiny_config(corpus, num_train_steps=6, eval_every=3, checkpoint_every=3)
  with monkeypatch.context() as patch:  # SIGTERM lands during step 3, which is due to evaluate
    patch.setattr(
      train_loop.StopSignals, 'preempted', lambda self, step: 'SIGTERM' if step == 3 else None
    )
    assert train_loop.train_and_evaluate(config, workdir) == {
      'preempted_at_step': 3,
      'signal': 'SIGTERM',
    }
  assert _evaluated_steps(workdir) == []
  results = train_loop.train_and_evaluate(config, workdir)
  assert _evaluated_steps(workdir) == [3, 6] and results['step'] == 6
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['step'] == 6


def _damage(path: str) -> None:
  with open(path, 'r+b') as f:
    size = len(f.read())
    f.seek(0)
    f.truncate(max(size // 2, 1) if size > 1 else 0)
    if size <= 1:
      f.write(b'\xff')


def _files(folder: str) -> list[str]:
  return sorted(os.path.join(r, n) for r, _, names in os.walk(folder) for n in names)


@pytest.mark.slow
@pytest.mark.parametrize('item', ['manifest', 'params', 'train', 'data'])
def test_a_damaged_newest_checkpoint_is_set_aside_and_reruns_succeed(
  tmp_path, corpus, item, capsys
):
  workdir = str(tmp_path / 'run')
  config = tiny_run.tiny_config(corpus, num_train_steps=6, eval_every=3, checkpoint_every=3)
  train_loop.train_and_evaluate(config, workdir)
  files = [
    p for p in _files(os.path.join(workdir, 'checkpoints', '6', item)) if 'commit_success' not in p
  ]
  _damage(max(files, key=os.path.getsize))
  os.remove(os.path.join(workdir, 'results.json'))  # as if killed after its last checkpoint
  # The first rerun falls back to step 3 and redoes 4-6; the second finds the run finished.
  results = [train_loop.train_and_evaluate(config, workdir) for _ in range(2)]
  assert results[0]['step'] == 6 and results[1] == results[0]
  out = capsys.readouterr().out
  assert 'resumed from checkpoint at step 3' in out and 'this run finished at step 6' in out
  assert os.listdir(os.path.join(workdir, 'damaged')) == ['checkpoints-6']


def test_early_stopping_and_testing_with_the_best_checkpoint(tmp_path, corpus, capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_run.tiny_config(
    corpus, num_train_steps=12, eval_every=2, checkpoint_every=2, early_stopping_evals=2
  )
  results = train_loop.train_and_evaluate(config, workdir)
  evaluated = _evaluated_steps(workdir)
  bleus = [r['eval_bleu'] for r in tiny_run.metrics(workdir) if 'eval_bleu' in r]
  out = capsys.readouterr().out
  assert 'train/validation gap: training loss' in out
  if results['step'] < 12:  # stopped early: the last two validations did not beat the best
    assert 'validations without a better BLEU' in out and max(bleus[-2:]) <= max(bleus[:-2])
  best_step = evaluated[max(range(len(bleus)), key=lambda i: (bleus[i], -i))]
  assert results['test_parameters'].startswith(f'best checkpoint (step {best_step},')


def test_checkpoint_averaging_is_evaluated_and_saved(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  config = tiny_run.tiny_config(
    corpus, num_train_steps=6, eval_every=3, checkpoint_every=2, average_last=3, keep_checkpoints=3
  )
  results = train_loop.train_and_evaluate(config, workdir)
  assert 'test_parameters' in results
  assert os.listdir(os.path.join(workdir, 'average')) == ['6']
  from transformer.training import workdir as workdir_lib

  model, _, step = workdir_lib.load_model(workdir, which='average')
  latest, _, _ = workdir_lib.load_model(workdir)
  assert step == 6
  # The average of steps 2, 4 and 6 is not the last checkpoint.
  a, b = model.embed.table.embedding[...], latest.embed.table.embedding[...]
  assert float(abs(a - b).max()) > 0


@pytest.mark.slow
def test_the_loop_overhead_benchmark_runs_with_the_default_recipe():
  """The benchmark compares the loop with the bare step on the same model: with 'auto' vocabulary
  and dropout in the default config, it must resolve them as the loop does."""
  import subprocess
  import sys

  command = [
    sys.executable,
    '-m',
    'benchmarks.loop_overhead',
    '--corpus=short',
    '--steps=30',
    '--batch_size=8',
    '--max_length=32',
    '--json',
  ]
  result = subprocess.run(
    command, cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['corpus'] == 'short' and report['batch'] == '8x32'
  assert report['loop_step_ms'] > 0 and report['bare_step_ms_before'] > 0
