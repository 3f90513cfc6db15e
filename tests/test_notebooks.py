"""Executes each notebook top to bottom in its quick setting (TRANSFORMER_NOTEBOOK_QUICK=1)."""

import os

from nbclient import NotebookClient
import nbformat
import pytest

pytestmark = pytest.mark.slow
NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'notebooks')


NAMES = ['walkthrough.ipynb', 'quickstart.ipynb', 'teacher_forcing.ipynb', 'pretrained.ipynb']


@pytest.mark.parametrize('name', NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
  path = os.path.join(NOTEBOOKS, name)
  notebook = nbformat.read(path, as_version=4)
  assert all(not cell.get('outputs') for cell in notebook.cells if cell.cell_type == 'code'), (
    'notebooks are stored without outputs'
  )
  monkeypatch.setenv('TRANSFORMER_NOTEBOOK_QUICK', '1')
  monkeypatch.setenv('TRANSFORMER_NOTEBOOK_FIGURES', str(tmp_path / 'figures'))
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  client = NotebookClient(
    notebook, timeout=900, kernel_name='python3', resources={'metadata': {'path': NOTEBOOKS}}
  )
  client.execute()
  figures = os.listdir(tmp_path / 'figures')
  assert figures, 'the notebook drew no figure'


def test_the_repository_address_is_written_in_one_place():
  import re
  import tomllib

  root = os.path.dirname(NOTEBOOKS)
  with open(os.path.join(root, 'pyproject.toml'), 'rb') as f:
    address = tomllib.load(f)['project']['urls']['Repository']
  texts = [open(os.path.join(NOTEBOOKS, n), encoding='utf-8').read() for n in NAMES]
  texts.append(open(os.path.join(root, 'README.md'), encoding='utf-8').read())
  for text in texts:
    for found in re.findall(
      r'https://(?:colab\.research\.google\.com/)?github(?:\.com)?/[\w.-]+/[\w.-]+', text
    ):
      assert found.endswith(address.split('github.com/')[1]), found
  assert all(f"REPOSITORY = '{address}'" in text for text in texts[:-1])
