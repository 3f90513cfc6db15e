"""Installs this repository into the running Python (Colab's) without replacing its jax where it
can: Colab's jax comes with the GPU or TPU support of the runtime.

    python notebooks/colab_install.py [REPOSITORY_DIR] [--extras=data,notebook] [--no-upgrade]
                                      [--print-commands] [pip arguments]

- The installed jax is at least the package's floor (`jax>=` in pyproject.toml): jax, jaxlib,
  the CUDA plugins and libtpu are pinned as pip constraints, so pip keeps them or fails instead
  of replacing them.
- The installed jax is older than the floor: jax is upgraded together with the runtime it came
  with (`jax[cuda12]`, `jax[cuda13]`, `jax[tpu]` or plain `jax`), and the script exits with
  status 3 asking for a runtime restart (the old jax may already be loaded); run the cell
  again after the restart. With `--no-upgrade` it stops instead with one line saying what to do.

`--extras` names the package extras a notebook needs (the walkthrough: `notebook`; notebooks that
read TFDS datasets: `data,notebook`). `--print-commands` prints the pip commands instead of
running them. Other arguments go to `pip install` (e.g. its `--dry-run --report FILE`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import tomllib

KEEP = re.compile(r'^(jax|jaxlib|jax[-_]cuda\d+[-_](plugin|pjrt)|libtpu)==', re.IGNORECASE)
RESTART_STATUS = 3


def installed_jax_pins() -> list[str]:
  """`name==version` of the jax packages installed in this Python."""
  frozen = subprocess.run(
    [sys.executable, '-m', 'pip', 'freeze'], capture_output=True, text=True, check=True
  )
  return [line for line in frozen.stdout.splitlines() if KEEP.match(line)]


def jax_floor(repository: str) -> str:
  """The lowest jax version the package accepts: the `jax>=` of pyproject.toml's dependencies."""
  with open(os.path.join(repository, 'pyproject.toml'), 'rb') as f:
    dependencies = tomllib.load(f)['project']['dependencies']
  for requirement in dependencies:
    found = re.match(r'^jax\s*>=\s*([\w.]+)', requirement)
    if found:
      return found.group(1)
  raise ValueError(f'{repository}/pyproject.toml: no jax>= among the dependencies')


def _version(text: str) -> tuple[int, ...]:
  """'0.8.1' -> (0, 8, 1); pre-release and local tails are dropped."""
  return tuple(int(part) for part in re.findall(r'\d+', text.split('+')[0])[:3])


def _runtime_extra(pins: list[str]) -> str:
  """The jax extra matching the installed accelerator runtime: 'tpu', 'cuda12', 'cuda13' or ''."""
  names = [pin.split('==')[0].lower().replace('_', '-') for pin in pins]
  if 'libtpu' in names:
    return 'tpu'
  for name in names:
    cuda = re.match(r'^jax-(cuda\d+)-', name)
    if cuda:
      return cuda.group(1)
  return ''


def plan(
  pins: list[str], floor: str, repository: str, extras: str, upgrade: bool, pip_args: list[str]
) -> tuple[list[list[str]], str, int]:
  """(pip install argument lists, message, exit status) for the installed jax `pins`."""
  package = [f'{repository}[{extras}]' if extras else repository]
  jax_pin = next((pin for pin in pins if pin.lower().startswith('jax==')), None)
  if jax_pin is None or _version(jax_pin.split('==')[1]) >= _version(floor):
    kept = f'keeping {jax_pin}' if jax_pin else 'no jax installed: pip installs one'
    return [['-c', '{constraints}', '-e', *package, *pip_args]], kept, 0
  installed = jax_pin.split('==')[1]
  extra = _runtime_extra(pins)
  wanted = f'jax[{extra}]>={floor}' if extra else f'jax>={floor}'
  if not upgrade:
    return (
      [],
      f'this runtime has jax {installed}, older than the {floor} this package needs: rerun '
      f'without --no-upgrade to install {wanted}, or pick a runtime with a newer jax',
      2,
    )
  message = (
    f'upgraded jax {installed} to {wanted} (with its {extra or "CPU"} runtime); restart the '
    'runtime (Runtime > Restart session) and run this cell again'
  )
  return [['-U', wanted], ['-e', *package, *pip_args]], message, RESTART_STATUS


def _options(argv: list[str]) -> tuple[str, str, bool, bool, list[str]]:
  """(repository, extras, upgrade, print_only, pip arguments) from the command line."""
  repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if argv and not argv[0].startswith('-'):
    repository, argv = argv[0], argv[1:]
  extras, upgrade, print_only, rest = 'data,notebook', True, False, []
  for arg in argv:
    if arg.startswith('--extras='):
      extras = arg.split('=', 1)[1]
    elif arg == '--no-upgrade':
      upgrade = False
    elif arg == '--print-commands':
      print_only = True
    else:
      rest.append(arg)
  return repository, extras, upgrade, print_only, rest


def main(argv: list[str]) -> int:
  repository, extras, upgrade, print_only, pip_args = _options(argv)
  pins = installed_jax_pins()
  commands, message, status = plan(
    pins, jax_floor(repository), repository, extras, upgrade, pip_args
  )
  with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False) as constraints:
    constraints.write('\n'.join(pins) + '\n')
  for arguments in commands:
    command = [sys.executable, '-m', 'pip', 'install', '-q']
    command += [a.replace('{constraints}', constraints.name) for a in arguments]
    if print_only:
      print(' '.join(command))
    elif subprocess.run(command).returncode != 0:
      print(f'colab_install: `{" ".join(command)}` failed (see pip above)', file=sys.stderr)
      return 1
  print(f'colab_install: {message}', file=sys.stderr if status else sys.stdout)
  return status


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
