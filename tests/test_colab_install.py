"""notebooks/colab_install.py: Colab's jax kept when it is new enough, upgraded with its runtime
(or refused in one line) when it is older than the package's floor."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
  'colab_install', os.path.join(ROOT, 'notebooks', 'colab_install.py')
)
colab_install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(colab_install)

GPU = ['jax=={v}', 'jaxlib=={v}', 'jax-cuda12-plugin=={v}', 'jax-cuda12-pjrt=={v}']
TPU = ['jax=={v}', 'jaxlib=={v}', 'libtpu==0.0.9']


def _pins(template, version):
  return [pin.format(v=version) for pin in template]


def test_the_floor_is_read_from_pyproject():
  with open(os.path.join(ROOT, 'pyproject.toml')) as f:
    assert f'"jax>={colab_install.jax_floor(ROOT)},' in f.read()


def test_a_jax_at_or_above_the_floor_is_kept_as_a_constraint():
  for version in ('0.8.1', '0.10.2', '0.12.0.1'):
    commands, message, status = colab_install.plan(
      _pins(GPU, version), '0.8.1', '/repo', 'notebook', True, []
    )
    assert status == 0 and commands == [['-c', '{constraints}', '-e', '/repo[notebook]']]
    assert f'jax=={version}' in message


@pytest.mark.parametrize('template, extra', [(GPU, 'cuda12'), (TPU, 'tpu'), (['jax=={v}'], '')])
def test_an_older_jax_is_upgraded_with_its_runtime_and_a_restart_asked(template, extra):
  commands, message, status = colab_install.plan(
    _pins(template, '0.4.33'), '0.8.1', '/repo', 'data,notebook', True, ['--no-deps']
  )
  wanted = f'jax[{extra}]>=0.8.1' if extra else 'jax>=0.8.1'
  assert commands == [['-U', wanted], ['-e', '/repo[data,notebook]', '--no-deps']]
  assert status == colab_install.RESTART_STATUS and 'restart the runtime' in message


def test_an_older_jax_without_upgrade_stops_in_one_line(capsys, monkeypatch):
  monkeypatch.setattr(colab_install, 'installed_jax_pins', lambda: _pins(GPU, '0.4.33'))
  status = colab_install.main([ROOT, '--no-upgrade', '--print-commands'])
  captured = capsys.readouterr()
  assert status == 2 and captured.out == ''
  line = captured.err.strip()
  assert '\n' not in line and 'jax 0.4.33, older than the 0.8.1' in line and 'jax[cuda12]' in line


def test_print_only_prints_the_pip_commands(capsys, monkeypatch):
  monkeypatch.setattr(colab_install, 'installed_jax_pins', lambda: _pins(TPU, '0.4.33'))
  assert colab_install.main([ROOT, '--extras=notebook', '--print-commands']) == 3
  printed = capsys.readouterr().out.strip().splitlines()
  assert printed[0].endswith('pip install -q -U jax[tpu]>=0.8.1')
  assert printed[1].endswith(f'pip install -q -e {ROOT}[notebook]')
  monkeypatch.setattr(colab_install, 'installed_jax_pins', lambda: _pins(GPU, '0.10.2'))
  assert colab_install.main([ROOT, '--print-commands']) == 0
  command = capsys.readouterr().out.strip().splitlines()[0].split()
  assert command[command.index('-c') + 1].endswith('.txt') and f'{ROOT}[data,notebook]' in command
