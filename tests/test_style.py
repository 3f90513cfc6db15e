"""The project's conventions, checked like its behaviour: lint, format, function length, layout."""

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60


def _ruff() -> list[str]:
  executable = shutil.which('ruff', path=str(pathlib.Path(sys.executable).parent)) or shutil.which(
    'ruff'
  )
  if executable is None:
    pytest.fail('ruff is not installed (it comes with the dev extra: pip install -e ".[dev]")')
  return [executable]


def test_ruff_lint_passes():
  result = subprocess.run([*_ruff(), 'check', '.'], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_format_is_applied():
  result = subprocess.run(
    [*_ruff(), 'format', '--check', '.'], cwd=ROOT, capture_output=True, text=True
  )
  assert result.returncode == 0, f'run `ruff format .`:\n{result.stdout[-4000:]}'


def test_no_function_in_the_package_is_longer_than_a_screen():
  long = []
  for path in sorted((ROOT / 'transformer').rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long.append(f'{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)')
  assert not long, long


def test_benchmarks_are_a_package_without_path_edits():
  for path in (ROOT / 'benchmarks').glob('*.py'):
    text = path.read_text()
    assert 'sys.path' not in text, path.name
    assert (
      'from benchmarks.train_throughput import' not in text or path.name == 'train_throughput.py'
    )
  result = subprocess.run(
    [sys.executable, '-m', 'benchmarks.train_throughput', '--help'],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0 and '--config' in result.stdout, result.stderr
