"""Run configs and workdirs: validation, resume compatibility."""

import os
import pathlib

import pytest

from configs import default
from transformer import _atomic
from transformer.training import config as run_config, workdir as workdir_lib


def test_resume_warns_when_num_train_steps_moves_the_linear_schedule(tmp_path):
  from configs import default

  config = default.get_config()
  workdir = str(tmp_path)
  assert workdir_lib.check_resume(config, workdir) == []  # first run
  workdir_lib.save_config(config, workdir)
  config.num_train_steps = 2 * config.num_train_steps
  warnings = workdir_lib.check_resume(config, workdir)
  assert len(warnings) == 1 and 'num_train_steps changed' in warnings[0] and 'linear' in warnings[0]
  config.lr_schedule = 'rsqrt'  # the paper's schedule ignores num_train_steps ...
  workdir_lib.save_config(config, workdir)
  config.num_train_steps = 3 * config.num_train_steps
  assert workdir_lib.check_resume(config, workdir) == []


def test_validate_config_names_the_field():
  from configs import default

  config = default.get_config()
  config.overlong = 'wrap'
  with pytest.raises(run_config.ConfigError, match='config.overlong'):
    run_config.validate_config(config)
  config = default.get_config()
  config.model.max_positions = 64
  with pytest.raises(run_config.ConfigError, match='model.max_positions'):
    run_config.validate_config(config)
  config = default.get_config()
  config.lr_schedule = 'cosine'
  with pytest.raises(run_config.ConfigError, match='config.lr_schedule'):
    run_config.validate_config(config)


def test_data_dependent_defaults_follow_their_documented_rules():
  from transformer.training import recipe

  assert recipe.vocab_size_for(1.4e6) == 8000  # the embedded corpus: ~1.4M words
  assert recipe.vocab_size_for(350e3) == 8000  # a 16k-pair corpus of everyday sentences
  assert recipe.vocab_size_for(120e3) == 8000  # 5k short pairs (docs/results.md): still 8,000
  assert recipe.vocab_size_for(4e6) == 13000  # above ~1.6M words, 6.4·√words
  assert recipe.vocab_size_for(1e3) == 8000 and recipe.vocab_size_for(250e6) == 32000  # the bounds
  passes = (0.5, 3.3, 5.8, 8.0, 10.6, 20.0)  # sub9k: 5.8, sub5k: 10.6 (docs/results.md)
  assert [recipe.dropout_for(e) for e in passes] == [0.0, 0.0, 0.0, 0.0, 0.3, 0.3]


def _measured(pairs: int, tokens_per_pair: float, vocab_size: int):
  from transformer.training import recipe

  return recipe.Measured(pairs, tokens_per_pair, recipe.Vocabulary(vocab_size, 'vocab'))


def test_the_plan_caps_passes_and_scales_dropout_with_them():
  from configs import default
  from transformer.training import recipe

  config = default.get_config()  # batch 16 x 128, 1,000 steps, at most 20 passes, auto dropout
  embedded = recipe.plan(config, _measured(29_404, 70.0, 8000))
  assert embedded.num_train_steps == 1000 and embedded.dropout_rate == 0.0  # ~1.8 passes
  sub15k = recipe.plan(config, _measured(15_000, 74.0, 5000))
  assert sub15k.dropout_rate == 0.0 and 3.0 < sub15k.epochs < 4.0  # still fitting: no dropout
  everyday = recipe.plan(config, _measured(16_600, 32.0, 4000))
  assert everyday.num_train_steps == 1000 and everyday.dropout_rate == 0.0  # ~7 passes
  tiny = recipe.plan(config, _measured(500, 30.0, 2000))
  assert tiny.num_train_steps == 82 and tiny.epochs == pytest.approx(20, rel=0.01)  # capped
  assert any('at most 20 passes' in line for line in tiny.report)
  config.model.dropout_rate = 0.15  # set by the user: kept
  assert recipe.plan(config, _measured(500, 30.0, 2000)).dropout_rate == 0.15


def test_a_run_the_budget_ends_takes_its_dropout_from_the_passes_its_measured_speed_allows():
  from configs import default
  from transformer.training import recipe

  config = default.get_config()
  config.num_train_steps = None  # until the 20-minute budget ends, at most 20 passes
  assert recipe.needs_step_time(config)
  # The embedded corpus: ~558.4 steps a pass, so the cap is 20 passes = 11,167 steps.
  slow = recipe.plan(config, _measured(29_404, 70.0, 8000), step_seconds=1.0)
  fast = recipe.plan(config, _measured(29_404, 70.0, 8000), step_seconds=0.05)
  assert slow.num_train_steps == fast.num_train_steps == 11_167  # the budget ends the run
  assert slow.dropout_rate == 0.0 and slow.epochs == pytest.approx(1200 / 558.4, rel=1e-3)
  assert fast.dropout_rate == 0.3 and fast.epochs == pytest.approx(20, rel=1e-3)  # capped
  assert 'about 1,200 at 1.000 s a step (measured)' in slow.report[1]
  config.model.dropout_rate = 0.1
  assert not recipe.needs_step_time(config)
  config.max_train_minutes = None
  with pytest.raises(
    run_config.ConfigError, match='num_train_steps=None .* needs config.max_train_minutes'
  ):
    run_config.validate_config(config)


def test_the_readme_config_reference_is_the_table_of_ranges():
  readme = (pathlib.Path(__file__).resolve().parent.parent / 'README.md').read_text()
  assert run_config.reference_table() in readme, 'run `python -m transformer.run_config`'


@pytest.mark.parametrize('name', sorted(run_config.RANGES))
def test_every_numeric_field_refuses_a_value_outside_its_range(name):
  config = default.get_config()
  accepted = run_config.RANGES[name]
  node, _, leaf = name.rpartition('.')
  (config[node] if node else config)[leaf] = (
    accepted.low - 1 if not accepted.above else accepted.low
  )
  with pytest.raises(run_config.ConfigError, match=f'config.{name} must be'):
    run_config.validate_config(config)


def test_translating_a_language_into_itself_is_refused():
  config = default.get_config()
  config.target_lang = config.source_lang
  with pytest.raises(run_config.ConfigError, match='source_lang and config.target_lang are both'):
    run_config.validate_config(config)


def test_a_failed_json_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  import errno
  import json as json_lib

  path = tmp_path / 'config.json'
  _atomic.write_json(str(path), {'a': 1})

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(json_lib, 'dump', full_disk)
  with pytest.raises(OSError, match='No space left'):
    _atomic.write_json(str(path), {'a': 2})
  assert os.listdir(tmp_path) == ['config.json']
  assert path.read_text() == '{\n  "a": 1\n}'


@pytest.mark.parametrize('grid', [(0.6, -1.0), (0.6, 'x'), (True,)])
def test_a_length_penalty_grid_of_anything_but_numbers_from_0_is_refused(grid):
  config = default.get_config()
  config.length_penalty_grid = grid
  with pytest.raises(
    run_config.ConfigError, match='config.length_penalty_grid must be numbers >= 0'
  ):
    run_config.validate_config(config)
