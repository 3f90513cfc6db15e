"""What a careless user can do to a run, and the one-line error that stops it before any work.

Each case runs the real set-up (`train_loop.train_and_evaluate`) on a tiny local corpus and checks
the message and that nothing was written to the workdir.
"""

import os
import subprocess

import pytest

from tests.helpers import text, tiny_run
from transformer.input_pipeline import tokenizer as tokenizer_lib
from transformer.training import loop as train_loop, recipe, workdir as workdir_lib, workdir_lock


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


def test_the_recipes_vocabulary_is_at_most_what_the_corpus_can_fill(tmp_path, corpus):
  """Set, a vocabulary too large is refused (above); left to the recipe (8,000 pieces), the tiny
  corpus gets the most SentencePiece can make, and a resume accepts that tokenizer."""
  from transformer.training import data as run_data

  config = tiny_run.tiny_config(corpus, vocab_size=None)
  workdir = str(tmp_path / 'run')
  data = run_data.prepare(config, workdir)
  assert 16 < data.tokenizer.vocab_size < 8000 == recipe.vocab_size_for(1.0)
  vocabulary = data.measured.vocabulary
  assert vocabulary.size == data.tokenizer.vocab_size
  assert (
    f'vocab {data.tokenizer.vocab_size} (auto: the most SentencePiece makes' in vocabulary.reason
  )
  assert recipe.plan(config, data.measured).resolve(config).vocab_size == vocabulary.size
  again = run_data.prepare(config, workdir)
  assert again.tokenizer.vocab_size == data.tokenizer.vocab_size and 'reused' in again.report[0]


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
  # None from the command line, where a field gives it a meaning; refused where it has none.
  budgetless = _train_py(
    ['--config.num_train_steps=None', '--config.max_train_minutes=None'], tmp_path
  )
  assert budgetless.returncode == 2 and budgetless.stderr.strip().splitlines() == [
    'train.py: error: config.num_train_steps=None trains until the time budget ends, within '
    'max_epochs passes: it needs config.max_train_minutes (got None)'
  ], budgetless.stderr
  seedless = _train_py(['--config.seed=None'], tmp_path)
  assert seedless.stderr.strip() == (
    'train.py: error: --config.seed cannot be None: it must be an integer >= 0'
  )


# ---------------------------------------------------------------------------------------------
# Workdirs that must keep working: one run at a time, failed starts, finished runs, edited data.


def test_a_second_run_on_a_held_workdir_stops_at_once_naming_the_holder(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  with workdir_lock.WorkdirLock(workdir):
    with pytest.raises(workdir_lock.WorkdirBusy, match=r'is in use by another run \(host .*, pid'):
      train_loop.train_and_evaluate(tiny_run.tiny_config(corpus), workdir)
    assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]  # nothing of the second run
  assert os.listdir(workdir) == []


def test_init_from_a_workdir_of_this_package_is_refused_before_anything_is_written(
  tmp_path, corpus
):
  trained = str(tmp_path / 'trained')
  train_loop.train_and_evaluate(tiny_run.tiny_config(corpus, num_train_steps=1), trained)
  _expect_error(
    tiny_run.tiny_config(corpus, init_from=trained),
    str(tmp_path / 'run'),
    'is a training workdir of this package, not a Hugging Face model: give it as --workdir',
  )


def test_a_start_killed_before_its_first_checkpoint_accepts_a_corrected_config(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  first = tiny_run.tiny_config(corpus, num_train_steps=1)
  os.makedirs(workdir)
  workdir_lib.save_config(first, workdir)
  with open(os.path.join(workdir, 'tokenizer.model'), 'w') as f:
    f.write('left by a killed start')  # no checkpoint: the run protected nothing
  corrected = tiny_run.tiny_config(corpus, num_train_steps=2, eval_every=2, **{'model.d_model': 16})
  results = train_loop.train_and_evaluate(corrected, workdir)
  assert results['step'] == 2
  assert sorted(os.listdir(os.path.join(workdir, 'abandoned', '1'))) == [
    'config.json',
    'tokenizer.model',
  ]


def test_rerunning_a_finished_run_keeps_its_results(tmp_path, corpus, capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_run.tiny_config(corpus, num_train_steps=3, eval_every=3)
  results = train_loop.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, 'results.json')
  written = open(path, 'rb').read()
  capsys.readouterr()
  for rerun in (config, tiny_run.tiny_config(corpus, num_train_steps=2, eval_every=3)):
    assert train_loop.train_and_evaluate(rerun, workdir) == results
    assert open(path, 'rb').read() == written
    assert 'this run finished at step 3' in capsys.readouterr().out
  assert results['ended'] == 'finished the 3 planned steps' and results['train_loss'] is not None


def test_data_edited_in_place_is_refused_on_resume_naming_the_split(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  train_loop.train_and_evaluate(tiny_run.tiny_config(corpus, num_train_steps=2), workdir)
  lines = open(corpus['train'], encoding='utf-8').read().splitlines()
  rows = [line.split('\t') for line in lines[1:]]
  swapped = [lines[0]] + ['\t'.join([row[0], row[2], row[1]]) for row in rows]  # en <-> fr
  with open(corpus['train'], 'w', encoding='utf-8') as f:
    f.write('\n'.join(swapped) + '\n')  # same path, other contents
  with pytest.raises(train_loop.ConfigError, match='was trained on other data: the train split'):
    train_loop.train_and_evaluate(tiny_run.tiny_config(corpus, num_train_steps=4), workdir)


# ---------------------------------------------------------------------------------------------
# Data and values that make no sense.


def test_a_validation_split_with_no_usable_example_is_an_error(tmp_path, corpus):
  long_pairs = b'id\ten\tfr\n' + b''.join(
    b'%d\t%s\t%s\n' % (i, b' '.join([b'word'] * 200), b'mot') for i in range(4)
  )
  _expect_error(
    tiny_run.tiny_config(_replace(corpus, 'validation', long_pairs)),
    str(tmp_path / 'run'),
    r'eval split: .* none of its 4 pairs fits max_length=80',
  )


def test_one_huge_line_does_not_change_the_plan(tmp_path, corpus, small_tokenizer):
  config = tiny_run.tiny_config(corpus)
  pairs = tiny_run.embedded_pairs('train', 300)
  plans = []
  for extra in ([], [(' '.join(['word'] * 100_000), 'mot')]):
    source = text.ListSource(pairs + extra)
    measured = recipe.measure(source, small_tokenizer, config, recipe.Vocabulary(500, ''))
    plan = recipe.plan(config, measured)
    plans.append((measured.pairs, round(measured.tokens_per_pair), plan.num_train_steps))
  assert plans[0] == plans[1], plans


@pytest.fixture
def small_tokenizer(tmp_path):
  sentences = [s for pair in tiny_run.embedded_pairs('train', 400) for s in pair]
  return tokenizer_lib.train_tokenizer(str(tmp_path / 'spm.model'), sentences, vocab_size=300)


# ---------------------------------------------------------------------------------------------
# Paths that are not what they should be, and what killed processes leave behind.


def test_a_named_pipe_as_a_data_file_is_refused_without_reading_it(tmp_path, corpus):
  pipe = str(tmp_path / 'train.tsv')
  os.mkfifo(pipe)
  _expect_error(
    tiny_run.tiny_config({**corpus, 'train': pipe}),
    str(tmp_path / 'run'),
    r'train\.tsv: not a regular file \(a named pipe',
  )


@pytest.mark.parametrize('where', ['data file', 'workdir', 'cache directory'])
def test_a_path_of_the_wrong_kind_is_one_line(tmp_path, corpus, where):
  a_file = str(tmp_path / 'a-file')
  open(a_file, 'w').close()
  workdir, files, extra = str(tmp_path / 'run'), dict(corpus), {}
  if where == 'data file':
    os.makedirs(tmp_path / 'folder.tsv')
    files['train'] = str(tmp_path / 'folder.tsv')
    match = 'a directory, not a data file'
  elif where == 'workdir':
    workdir, match = a_file, 'is a file, not a directory'
  else:
    extra, match = {'data_cache_dir': a_file}, 'data_cache_dir .* is a file, not a directory'
  with pytest.raises(train_loop.ConfigError, match=match) as error:
    train_loop.train_and_evaluate(tiny_run.tiny_config(files, **extra), workdir)
  assert '\n' not in str(error.value)


def test_temporary_files_of_killed_processes_are_removed_at_the_next_start(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  dead = _finished_pid()
  left = os.path.join(workdir, f'config.json.tmp{dead}')
  open(left, 'w').close()
  cache = os.path.join(os.path.dirname(corpus['train']), 'prepared')
  half_prepared = os.path.join(cache, f'train-0123.tmp-{dead}')
  os.makedirs(half_prepared)
  train_loop.train_and_evaluate(tiny_run.tiny_config(corpus, num_train_steps=1), workdir)
  assert not os.path.exists(left) and not os.path.exists(half_prepared)


def _finished_pid() -> int:
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid
