"""Executes each notebook top to bottom in its quick setting (TRANSFORMER_NOTEBOOK_QUICK=1)."""

import json
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
  this_project = address.split('github.com/')[1]
  for text in texts:
    colab_links = re.findall(r'https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)', text)
    github_links = re.findall(r'https://github\.com/([\w.-]+/[\w.-]+)', text)
    same_name = [link for link in github_links if link.split('/')[1] == this_project.split('/')[1]]
    assert all(link == this_project for link in colab_links + same_name), colab_links + same_name
  for name in NAMES:  # each notebook's set-up cell clones from that address
    cells = json.load(open(os.path.join(NOTEBOOKS, name), encoding='utf-8'))['cells']
    code = '\n'.join(''.join(cell['source']) for cell in cells)
    assert re.search(rf"REPOSITORY = \(?\s*'{re.escape(address)}'", code), name
