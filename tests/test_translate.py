"""Translating text: one line out per line in, order, input checks, bounded compilations."""

import subprocess
import sys

from flax import nnx
import numpy as np
import pytest

from tests.helpers import configs, tiny_run
from transformer import Transformer, translate as command
from transformer.decoding import search, translation
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
  together = translation.translate(
    model, tokenizer, sentences, beam_size=1, batch_size=3, extra_length=4
  )
  alone = [
    translation.translate(model, tokenizer, [s], beam_size=1, batch_size=3, extra_length=4)[0]
    for s in sentences
  ]
  assert together == alone and together[7] == ''


def test_compilations_are_bounded_by_length_buckets(model, tokenizer):
  """Sources of 40 different lengths compile once per 16-token bucket, not once per length."""
  sentences = [' '.join(['the'] * n) for n in range(1, 41)]
  before = search._generate._cache_size()
  translation.translate(model, tokenizer, sentences, beam_size=1, batch_size=1, extra_length=2)
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
    (['--beam_size=0'], b'x\n', '--beam_size must be >= 1, got 0'),
    (['--n_best=0'], b'x\n', '--n_best must be between 1 and the beam size'),
    (['--length_penalty=-1'], b'x\n', '--length_penalty must be >= 0, got -1.0'),
    (['--sampling_topk=5', '--beam_size=4'], b'x\n', '--beam_size must be 1 with sampling'),
    (['--sampling_temperature=-1'], b'x\n', '--sampling_temperature must be > 0, got -1.0'),
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


def test_token_budget_batches_hold_at_most_that_many_padded_source_tokens(model, tokenizer):
  """--max_batch_tokens: short sentences go many to a batch, long ones few, every batch within
  the budget (or a sentence alone where one exceeds it), and the translations are those of
  sentence-count batches."""
  sentences = [' '.join(['the'] * n) for n in (2, 3, 30, 2, 45, 4, 31, 5, 1)]
  lengths = {i: len(tokenizer.encode(s)) + 1 for i, s in enumerate(sentences)}
  rows_for = lambda length: max(1, 64 // length)
  groups = translation.batches(lengths, rows_for, model.config.max_positions)
  assert sorted(i for group, _ in groups for i in group) == list(range(len(sentences)))
  assert all(len(group) * length <= 64 or len(group) == 1 for group, length in groups)
  assert [len(group) for group, _ in groups] == [4, 2, 2, 1]  # 4 rows of 16, 2 of 32, 1 of 48
  by_tokens = translation.translate(
    model, tokenizer, sentences, beam_size=1, max_batch_tokens=64, extra_length=4
  )
  by_count = translation.translate(
    model, tokenizer, sentences, beam_size=1, batch_size=3, extra_length=4
  )
  assert by_tokens == by_count


def test_n_best_and_scores_print_in_one_documented_format():
  hypotheses = [
    [translation.Hypothesis('a b', -0.5, -1.25), translation.Hypothesis('a\nc', -0.75, -2.0)],
    [translation.Hypothesis('', 0.0, 0.0)] * 2,
  ]
  assert command.format_lines(hypotheses, n_best=1, scores=False) == 'a b\n\n'
  assert command.format_lines(hypotheses, n_best=1, scores=True) == (
    'a b ||| -0.500000 ||| -1.250000\n ||| 0.000000 ||| 0.000000\n'
  )
  assert command.format_lines(hypotheses, n_best=2, scores=False).splitlines() == [
    '0 ||| a b ||| -0.500000 ||| -1.250000',
    '0 ||| a c ||| -0.750000 ||| -2.000000',
    '1 |||  ||| 0.000000 ||| 0.000000',
    '1 |||  ||| 0.000000 ||| 0.000000',
  ]


def test_translate_n_best_returns_the_best_first_and_translate_the_best(model, tokenizer):
  sentences = ['In the beginning', '', 'And God said']
  best = translation.translate(model, tokenizer, sentences, beam_size=3, extra_length=5)
  hypotheses = translation.translate_n_best(
    model, tokenizer, sentences, n_best=3, beam_size=3, extra_length=5
  )
  assert [h[0].text for h in hypotheses] == best
  assert all(len(h) == 3 and h[0].score >= h[1].score >= h[2].score for h in hypotheses)
  assert hypotheses[1][0] == translation.Hypothesis('', 0.0, 0.0)


def test_samples_per_sentence_repeat_in_any_batch(model, tokenizer):
  from transformer.decoding.options import Sampling

  sentences = ['In the beginning', '', 'And God said', 'Go in peace']
  sample = lambda batch_size, seed: translation.translate_n_best(
    model,
    tokenizer,
    sentences,
    beam_size=1,
    sampling=Sampling(temperature=1.5, seed=seed),
    num_samples=3,
    batch_size=batch_size,
    extra_length=6,
  )
  together, alone = sample(8, 0), sample(1, 0)
  assert [len(h) for h in together] == [3, 3, 3, 3]
  texts = lambda hypotheses: [[h.text for h in sentence] for sentence in hypotheses]
  assert texts(together) == texts(alone)
  np.testing.assert_allclose(
    [h.log_prob for s in together for h in s], [h.log_prob for s in alone for h in s], atol=1e-3
  )
  assert len({h.text for h in together[0]}) > 1  # three draws, not one repeated
  assert together[1][0].text == '' and texts(sample(8, 1)) != texts(together)


@pytest.mark.parametrize('beam_size', [1, 3])
def test_translations_start_with_their_prefixes(model, tokenizer, beam_size):
  sentences = ['In the beginning', 'And God said', 'Go in peace', '']
  prefixes = ['Au commencement', '', 'Allez en', 'Rien']
  options = dict(beam_size=beam_size, n_best=beam_size, extra_length=6, batch_size=2)
  hypotheses = translation.translate_n_best(
    model, tokenizer, sentences, prefixes=prefixes, **options
  )
  for number in (0, 2):
    assert all(h.text.startswith(prefixes[number]) for h in hypotheses[number])
  assert hypotheses[3][0].text == ''  # an empty source gives an empty line, prefix or not
  # An empty prefix is no prefix.
  plain = translation.translate_n_best(model, tokenizer, sentences, **options)
  assert [h.text for h in hypotheses[1]] == [h.text for h in plain[1]]
  assert plain[0][0].text != hypotheses[0][0].text  # the prefix changed what came out


def test_sampled_translations_start_with_their_prefixes(model, tokenizer):
  from transformer.decoding.options import Sampling

  found = translation.translate_n_best(
    model,
    tokenizer,
    ['In the beginning', 'Go in peace'],
    beam_size=1,
    sampling=Sampling(temperature=2.0, seed=1),
    num_samples=3,
    prefixes=['Au commencement', ''],
    extra_length=4,
  )
  assert all(h.text.startswith('Au commencement') for h in found[0])


def test_prefixes_must_match_the_sentences(model, tokenizer):
  with pytest.raises(ValueError, match='1 target prefixes for 2 sentences'):
    translation.translate(model, tokenizer, ['a', 'b'], prefixes=['x'], beam_size=1)


def test_decoding_options_are_one_object_that_keywords_override(model, tokenizer):
  from transformer.decoding.options import DecodingOptions, Sampling

  options = DecodingOptions(beam_size=3, extra_length=5)
  sentences = ['In the beginning', 'And God said']
  assert translation.translate(model, tokenizer, sentences, options) == translation.translate(
    model, tokenizer, sentences, beam_size=3, extra_length=5
  )
  greedy = translation.translate(model, tokenizer, sentences, options, beam_size=1)
  assert greedy == translation.translate(model, tokenizer, sentences, beam_size=1, extra_length=5)
  with pytest.raises(TypeError, match=r"unknown decoding options \['beam'\]"):
    translation.translate(model, tokenizer, sentences, options, beam=2)
  with pytest.raises(ValueError, match='beam_size must be 1 with sampling'):
    DecodingOptions(beam_size=2, sampling=Sampling())


def test_the_length_penalty_has_one_name_in_every_decoding_call(model, tokenizer):
  """`length_penalty` is the field of DecodingOptions, the keyword of translate and generate,
  the config's and results.json's name; `alpha` is refused as the unknown option it is."""
  from transformer.decoding.options import DecodingOptions

  sentences = ['the light', 'and God said']
  by_keyword = translation.translate(
    model, tokenizer, sentences, beam_size=3, length_penalty=1.4, extra_length=6
  )
  options = DecodingOptions(beam_size=3, length_penalty=1.4, extra_length=6)
  assert by_keyword == translation.translate(model, tokenizer, sentences, options)
  with pytest.raises(TypeError, match="unknown decoding options \\['alpha'\\]"):
    translation.translate(model, tokenizer, sentences, alpha=1.4)
