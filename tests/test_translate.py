"""Translating text: one line out per line in, order, input checks, bounded compilations."""

import subprocess
import sys

from flax import nnx
import numpy as np
import pytest

from benchmarks import tiny_run
from tests.helpers import configs
from transformer import Transformer, search, translate
from transformer.input_pipeline import tokenizer as tokenizer_lib
from transformer.translate import InputError, split_lines


def test_lines_split_at_newline_only():
  text = 'one\u2028still one\x85and\x0cstill\r\ntwo\n\nfour\r\n'.encode()
  assert split_lines(text, 'x') == ['one\u2028still one\x85and\x0cstill', 'two', '', 'four']
  assert split_lines(b'no final newline', 'x') == ['no final newline']
  assert split_lines(b'', 'x') == []
  with pytest.raises(InputError, match=r'in.txt:2: invalid UTF-8 at byte 3'):
    split_lines(b'ok\nbad\xff\n', 'in.txt')


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.model')
  sentences = [s for pair in tiny_run.embedded_pairs('train', 600) for s in pair]
  return tokenizer_lib.train_tokenizer(path, sentences, vocab_size=200)


@pytest.fixture(scope='module')
def model(tokenizer):
  m = Transformer(
    configs.tiny_config(vocab_size=tokenizer.vocab_size, max_positions=128), rngs=nnx.Rngs(1)
  )
  m.eval()
  return m


def test_more_sentences_than_a_batch_come_back_in_order(model, tokenizer):
  sentences = [' '.join(['word'] * n) for n in (9, 1, 5, 12, 3, 7, 2)] + ['', 'In the beginning']
  together = translate.translate(
    model, tokenizer, sentences, beam_size=1, batch_size=3, extra_length=4
  )
  alone = [
    translate.translate(model, tokenizer, [s], beam_size=1, batch_size=3, extra_length=4)[0]
    for s in sentences
  ]
  assert together == alone and together[7] == ''


def test_compilations_are_bounded_by_length_buckets(model, tokenizer):
  """Sources of 40 different lengths compile once per 16-token bucket, not once per length."""
  sentences = [' '.join(['the'] * n) for n in range(1, 41)]
  before = search._generate._cache_size()
  translate.translate(model, tokenizer, sentences, beam_size=1, batch_size=1, extra_length=2)
  lengths = {len(tokenizer.encode(s)) + 1 for s in sentences}
  buckets = {search.bucket(n, model.config.max_positions) for n in lengths}
  assert len(lengths) > 20 and len(buckets) <= 4
  assert search._generate._cache_size() - before <= len(buckets)


def _cli(args, stdin=None, **kwargs):
  return subprocess.run(
    [sys.executable, '-m', 'transformer.translate', *args],
    cwd=tiny_run.ROOT,
    env=tiny_run.env(),
    input=stdin,
    capture_output=True,
    timeout=120,
    **kwargs,
  )


@pytest.mark.parametrize(
  'args,stdin,message',
  [
    (['--input=/no/such/file'], b'', 'translate: error: /no/such/file: No such file or directory'),
    ([], b'fine\n\xff\xfe\n', 'translate: error: <stdin>:2: invalid UTF-8 at byte 0'),
    (['--batch_size=0'], b'x\n', '--batch_size must be >= 1'),
    (['--extra_length=-1'], b'x\n', '--extra_length must be >= 0'),
    (['--beam_size=0'], b'x\n', '--beam_size must be >= 1'),
  ],
)
def test_cli_checks_its_input_before_loading_a_model(tmp_path, args, stdin, message):
  # The workdir does not exist: each of these must be reported before it is looked at.
  result = _cli([f'--workdir={tmp_path / "nowhere"}', *args], stdin)
  assert result.returncode != 0
  assert message in result.stderr.decode()
  assert 'Traceback' not in result.stderr.decode()


def test_cli_with_stdin_closed():
  command = f'exec {sys.executable} -m transformer.translate --workdir=x <&-'  # stdin closed
  closed = subprocess.run(
    ['bash', '-c', command], cwd=tiny_run.ROOT, env=tiny_run.env(), capture_output=True, timeout=120
  )
  assert closed.returncode == 2 and b'stdin is closed' in closed.stderr, closed.stderr


def test_decode_bucket():
  assert [search.bucket(n, 100) for n in (1, 16, 17, 99)] == [16, 16, 32, 100]
  np.testing.assert_array_equal(search.bucket(40, 256), 48)
