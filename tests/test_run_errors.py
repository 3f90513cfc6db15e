"""What a careless user can do to a run, and the one-line error that stops it before any work.

Each case runs the real set-up (`train_loop.train_and_evaluate`) on a tiny local corpus and checks
the message and that nothing was written to the workdir.
"""

import os
import subprocess

import pytest

from benchmarks import tiny_run
from transformer import train_loop


@pytest.fixture
def corpus(tmp_path):
  return tiny_run.write_tiny_corpus(str(tmp_path / 'corpus'), train=120, eval_=8)


def _expect_error(config, workdir, match):
  with pytest.raises(train_loop.USER_ERRORS, match=match):
    train_loop.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir) or os.listdir(workdir) == [], os.listdir(workdir)


def _replace(files, split, content: bytes, name=None):
  path = os.path.join(os.path.dirname(files[split]), name or f'{split}-bad.tsv')
  with open(path, 'wb') as f:
    f.write(content)
  return {**files, split: path}


@pytest.mark.parametrize(
  'split,content,match',
  [
    ('test', None, r'test\.tsv: file not found'),
    ('validation', b'id\ten\tfr\n', r'eval split: .* no sentence pairs'),
    ('train', b'', r'empty file \(expected a header line\)'),
    (
      'train',
      b'id\ten\tfr\n1\thello\n',
      r'train-bad\.tsv:2: expected 3 tab-separated columns, found 2',
    ),
    ('train', b'id\ten\tfr\n1\tcaf\xe9\tx\n', r'train-bad\.tsv:2: invalid UTF-8'),
    ('train', b'id\tenglish\tfr\n1\ta\tb\n', r"train-bad\.tsv:1: header .* has no column 'en'"),
  ],
)
def test_a_bad_split_stops_the_run_before_anything_is_written(
  tmp_path, corpus, split, content, match
):
  files = (
    _replace(corpus, split, content)
    if content is not None
    else {**corpus, split: str(tmp_path / 'test.tsv')}
  )
  _expect_error(tiny_run.tiny_config(files), str(tmp_path / 'run'), match)


def test_a_vocabulary_the_corpus_cannot_fill_is_refused_first(tmp_path, corpus):
  _expect_error(
    tiny_run.tiny_config(corpus, vocab_size=30000),
    str(tmp_path / 'run'),
    r'config.vocab_size=30000 is more than SentencePiece can make .* \(at most \d+\)',
  )


def test_a_failed_first_run_does_not_block_a_corrected_one(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  _expect_error(tiny_run.tiny_config(corpus, vocab_size=30000), workdir, 'vocab_size')
  # config.json was not written, so the corrected config is not "a different config".
  results = train_loop.train_and_evaluate(
    tiny_run.tiny_config(corpus, num_train_steps=2, eval_every=2), workdir
  )
  assert results['step'] == 2


def test_resume_changes_are_refused_or_reported(tmp_path, corpus, capsys):
  workdir = str(tmp_path / 'run')
  train_loop.train_and_evaluate(
    tiny_run.tiny_config(corpus, num_train_steps=2, eval_every=2), workdir
  )
  with pytest.raises(train_loop.ConfigError, match='the config changes the optimizer'):
    train_loop.train_and_evaluate(
      tiny_run.tiny_config(corpus, num_train_steps=4, max_grad_norm=1.0), workdir
    )
  moved = {
    **corpus,
    'train': _replace(corpus, 'train', open(corpus['train'], 'rb').read(), 'copy.tsv')['train'],
  }
  with pytest.raises(train_loop.ConfigError, match='local_files: .* in the workdir'):
    train_loop.train_and_evaluate(tiny_run.tiny_config(moved, num_train_steps=4), workdir)
  capsys.readouterr()
  train_loop.train_and_evaluate(
    tiny_run.tiny_config(corpus, num_train_steps=4, eval_every=4, max_length=70), workdir
  )
  assert 'config.max_length changed from 80 to 70' in capsys.readouterr().out


def _train_py(args, tmp_path):
  return subprocess.run(
    tiny_run.train_command(str(tmp_path / 'run'), args),
    cwd=tiny_run.ROOT,
    env=tiny_run.env(),
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_train_py_reports_user_errors_in_one_line(tmp_path, corpus):
  unknown = _train_py(['--config.modle.d_model=64'], tmp_path)
  assert unknown.returncode == 2
  assert unknown.stderr.strip().splitlines() == [
    'train.py: error: --config.modle.d_model: no such config field (nearest: model.d_model)'
  ], unknown.stderr
  bad_data = _train_py(
    tiny_run.tiny_overrides({**corpus, 'test': str(tmp_path / 'none.tsv')}), tmp_path
  )
  assert bad_data.returncode == 2 and 'Traceback' not in bad_data.stderr
  assert bad_data.stderr.strip().splitlines()[-1].startswith('train.py: error: ')
  assert 'none.tsv: file not found' in bad_data.stderr
  verbose = _train_py(
    tiny_run.tiny_overrides({**corpus, 'test': str(tmp_path / 'none.tsv')}) + ['--verbose'],
    tmp_path,
  )
  assert 'Traceback' in verbose.stderr
