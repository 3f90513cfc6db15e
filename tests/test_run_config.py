"""Run configs and workdirs: validation, resume compatibility."""

import pytest

from transformer import run_config
from transformer import workdir as workdir_lib


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
  config.model.max_length = 64
  with pytest.raises(run_config.ConfigError, match='model.max_length'):
    run_config.validate_config(config)
  config = default.get_config()
  config.lr_schedule = 'cosine'
  with pytest.raises(run_config.ConfigError, match='config.lr_schedule'):
    run_config.validate_config(config)
