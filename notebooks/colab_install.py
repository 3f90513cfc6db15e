"""Installs this repository into the running Python without changing its jax (Colab's, with the
GPU or TPU support that came with it).

    python notebooks/colab_install.py [REPOSITORY_DIR] [--dry-run --report FILE]

The installed jax, jaxlib, CUDA plugins and libtpu are pinned as pip constraints, so pip keeps
them or fails instead of replacing them. Extra arguments go to `pip install`.
"""

import os
import re
import subprocess
import sys
import tempfile

KEEP = re.compile(r'^(jax|jaxlib|jax[-_]cuda\d+[-_](plugin|pjrt)|libtpu)==', re.IGNORECASE)


def installed_jax_pins() -> list[str]:
  """`name==version` of the jax packages installed in this Python."""
  frozen = subprocess.run(
    [sys.executable, '-m', 'pip', 'freeze'], capture_output=True, text=True, check=True
  )
  return [line for line in frozen.stdout.splitlines() if KEEP.match(line)]


def main(argv: list[str]) -> int:
  repository = (
    argv[0]
    if argv and not argv[0].startswith('-')
    else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  extra = argv[1:] if argv and not argv[0].startswith('-') else argv
  with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False) as constraints:
    constraints.write('\n'.join(installed_jax_pins()) + '\n')
  command = [
    sys.executable,
    '-m',
    'pip',
    'install',
    '-q',
    '-c',
    constraints.name,
    '-e',
    f'{repository}[data,notebook]',
    *extra,
  ]
  return subprocess.run(command).returncode


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
