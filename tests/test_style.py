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


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _own_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
  """A function's lines without its docstring and without the functions nested in it (each of
  those is measured on its own): closures that keep one algorithm together do not count twice."""
  lines = node.end_lineno - node.lineno + 1
  body = node.body
  if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
    lines -= body[0].end_lineno - body[0].lineno + 1
  pending = list(ast.iter_child_nodes(node))
  while pending:  # the functions directly inside this one (not inside those)
    child = pending.pop()
    if isinstance(child, _FUNCTIONS):
      lines -= child.end_lineno - child.lineno + 1
    else:
      pending.extend(ast.iter_child_nodes(child))
  return lines


def test_no_function_in_the_package_is_longer_than_a_screen():
  long = []
  for path in sorted((ROOT / 'transformer').rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, _FUNCTIONS):
        lines = _own_lines(node)
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


def _package_imports() -> dict[str, set[str]]:
  """`{module: the transformer modules it imports}`, lazy (function-level) imports included."""
  modules = {}
  for path in (ROOT / 'transformer').rglob('*.py'):
    parts = path.relative_to(ROOT).with_suffix('').parts
    modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  graph = {}
  for name, path in modules.items():
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        found |= {alias.name for alias in node.names}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          base = '.'.join(package.split('.')[: len(package.split('.')) - node.level + 1] + [base])
        found |= {f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base for a in node.names}
    graph[name] = {m for m in found if m in modules and m not in (name, 'transformer')}
  return graph


def test_the_package_has_no_import_cycle():
  graph, state, cycles = _package_imports(), {}, []

  def visit(module, trail):
    state[module] = 'open'
    for imported in sorted(graph[module]):
      if state.get(imported) == 'open':
        cycles.append(trail[trail.index(imported) :] + [imported])
      elif imported not in state:
        visit(imported, trail + [imported])
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, [' -> '.join(c) for c in cycles]


# What each layer may not import (lazy imports included): the model knows nothing of how it is
# decoded, trained, loaded or exported; the input pipeline is a leaf. The special ids are the
# vocabulary's layout, which the model's config defaults to: importable from every layer.
SHARED = ('transformer.input_pipeline.special_ids',)
FORBIDDEN = {
  'transformer.model': ('decoding', 'training', 'pretrained', 'export', 'input_pipeline'),
  'transformer.parallel': (
    'model',
    'decoding',
    'training',
    'pretrained',
    'export',
    'input_pipeline',
  ),
  'transformer.decoding': ('training', 'pretrained', 'export'),
  'transformer.pretrained': ('decoding', 'training', 'export'),
  'transformer.input_pipeline': (
    'model',
    'parallel',
    'decoding',
    'training',
    'pretrained',
    'export',
    'translate',
    'linen',
  ),
}


@pytest.mark.parametrize('layer', sorted(FORBIDDEN))
def test_each_layer_imports_nothing_it_must_not(layer):
  forbidden = tuple(f'transformer.{name}' for name in FORBIDDEN[layer])
  upward = {
    module: sorted(m for m in imports if m.startswith(forbidden) and m not in SHARED)
    for module, imports in _package_imports().items()
    if module == layer or module.startswith(layer + '.')
  }
  assert not {m: i for m, i in upward.items() if i}, upward


def test_the_package_reads_as_subpackages_and_commands():
  top = sorted(p.name for p in (ROOT / 'transformer').iterdir() if not p.name.startswith('__'))
  assert top == [
    '_atomic.py',
    '_lazy.py',
    'average.py',
    'decoding',
    'export',
    'input_pipeline',
    'linen.py',
    'model',
    'parallel',
    'pretrained',
    'run_config.py',
    'training',
    'translate.py',
  ]
