"""Hugging Face Marian (opus-mt) models: exact loading, generation, export, fine-tuning.

The fixtures are built offline with transformers and torch (test-only dependencies): a tiny
random MarianMTModel shaped like opus-mt and a real MarianTokenizer.
"""

import json
import os
import subprocess
import sys

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import configs, hf_bart_fixture, marian_fixture, tiny_run
from transformer import Transformer
from transformer.decoding import search
from transformer.input_pipeline import tokenizer as tokenizer_lib
from transformer.pretrained import marian

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


@pytest.fixture(scope='module', params=['shared', 'separate'])
def pretrained(tmp_path_factory, request):
  directory = str(tmp_path_factory.mktemp(f'marian_{request.param}'))
  marian_fixture.build(directory, shared=request.param == 'shared')
  hf = transformers.MarianMTModel.from_pretrained(directory).eval()
  hf_tokenizer = transformers.MarianTokenizer.from_pretrained(directory)
  return directory, hf, hf_tokenizer


SENTENCES = [s for s, _ in tiny_run.embedded_pairs('test', 12)] + [
  'And God said, Let there be light.',
  'The Lord is my shepherd.',
  'Go in peace.',
  'He wept.',
]


def _hf_batch(hf_tokenizer, sentences=SENTENCES):
  return hf_bart_fixture.hf_batch(hf_tokenizer, sentences, max_length=30)


def test_tokenizer_gives_transformers_ids(pretrained):
  directory, _, hf_tokenizer = pretrained
  tokenizer = marian.load_tokenizer(directory)
  for sentence in SENTENCES + ['>>fra<< a language code first', 'ünïcödé ∑ unknown pieces']:
    assert (
      tokenizer.encode(sentence) + [tokenizer.special_ids['eos_id']]
      == hf_tokenizer(sentence)['input_ids']
    )
  ids = hf_tokenizer(SENTENCES[0])['input_ids']
  assert tokenizer.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)


def test_logits_equal_transformers(pretrained):
  directory, hf, hf_tokenizer = pretrained
  model, _ = marian.load(directory)
  assert model.config.bos_id == hf.config.decoder_start_token_id == hf.config.pad_token_id
  batch = _hf_batch(hf_tokenizer)
  start = hf.config.decoder_start_token_id
  decoder_input = torch.tensor([[start, 5, 9, 12, 40, 0]] * len(SENTENCES))  # starts with pad
  with torch.no_grad():
    expected = hf(**batch, decoder_input_ids=decoder_input).logits.numpy()
  logits = np.asarray(
    model(jnp.asarray(batch['input_ids'].numpy()), jnp.asarray(decoder_input.numpy()))
  )
  np.testing.assert_allclose(logits, expected, atol=1e-4)


def _generated(hf, batch, **kwargs):
  """transformers' generation without opus-mt's forced EOS, unless `kwargs` asks for it."""
  return hf_bart_fixture.generated(hf, batch, **{'forced_eos_token_id': None, **kwargs})


@pytest.mark.parametrize('beam_size,alpha', [(1, 1.0), (4, 1.0), (4, 0.6)])
def test_generation_equals_transformers_generate(pretrained, beam_size, alpha):
  directory, hf, hf_tokenizer = pretrained
  model, _ = marian.load(directory)
  batch = _hf_batch(hf_tokenizer)
  expected = _generated(hf, batch, num_beams=beam_size, length_penalty=alpha)
  tokens = np.asarray(
    search.generate(
      model,
      batch['input_ids'].numpy().astype(np.int32),
      beam_size=beam_size,
      length_penalty=alpha,
      max_new_tokens=20,
      length_normalization='hf',
    )
  )
  pad = hf.config.pad_token_id
  width = max(tokens.shape[1], expected.shape[1])
  padded = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=pad)
  assert (expected == hf.config.eos_token_id).any()  # hypotheses end in EOS, not only at the limit
  np.testing.assert_array_equal(padded(tokens), padded(expected))


def test_a_model_of_this_package_exports_to_marian(tmp_path):
  sentences = [s for pair in tiny_run.embedded_pairs('train', 500) for s in pair]
  tokenizer = tokenizer_lib.train_tokenizer(str(tmp_path / 'spm.model'), sentences, vocab_size=300)
  config = configs.tiny_config(
    vocab_size=tokenizer.vocab_size, norm_position='post', logits_bias=True
  )
  model = Transformer(config, rngs=nnx.Rngs(0))
  model.eval()
  model.logits_bias[...] = jnp.linspace(-1.0, 1.0, tokenizer.vocab_size)
  marian.save(model, tokenizer, str(tmp_path / 'exported'))
  hf = transformers.MarianMTModel.from_pretrained(str(tmp_path / 'exported')).eval()
  hf_tokenizer = transformers.MarianTokenizer.from_pretrained(str(tmp_path / 'exported'))
  batch = hf_tokenizer(SENTENCES[-3:], return_tensors='pt', padding=True)
  for row, sentence in zip(batch['input_ids'].tolist(), SENTENCES[-3:]):  # the same ids both ways
    assert [i for i in row if i != config.pad_id] == tokenizer.encode(sentence) + [config.eos_id]
  decoder_input = torch.tensor([[config.bos_id, 5, 9, 12]] * 3)
  with torch.no_grad():
    expected = hf(**batch, decoder_input_ids=decoder_input).logits.numpy()
  logits = np.asarray(
    model(jnp.asarray(batch['input_ids'].numpy()), jnp.asarray(decoder_input.numpy()))
  )
  # Marian's LayerNorm epsilon is 1e-5, this model's 1e-6: the logits differ by ~1e-5.
  np.testing.assert_allclose(logits, expected, atol=1e-4)
  with pytest.raises(marian.MarianError, match="norm_position='pre'"):
    marian.save(
      Transformer(config.replace(norm_position='pre'), rngs=nnx.Rngs(0)),
      tokenizer,
      str(tmp_path / 'x'),
    )


@pytest.mark.slow
def test_fine_tuning_from_a_pretrained_directory(pretrained, tmp_path):
  directory, _, _ = pretrained
  corpus = tiny_run.write_tiny_corpus(str(tmp_path / 'corpus'), train=200, eval_=8)
  overrides = tiny_run.tiny_overrides(
    corpus,
    init_from=directory,
    num_train_steps=20,
    log_every=5,
    eval_every=20,
    max_length=48,
    warmup_steps=5,
    learning_rate_scale=3.0,
  )
  workdir = str(tmp_path / 'run')
  result = tiny_run.run_train(workdir, overrides)
  losses = [r['train_loss'] for r in tiny_run.metrics(workdir) if 'train_loss' in r]
  assert losses[-1] < losses[0], losses
  assert 'tokenizer' in os.listdir(workdir) and 'model.json' in os.listdir(workdir)
  assert json.load(open(os.path.join(workdir, 'model.json')))['sinusoid_layout'] == 'halves'
  translated = subprocess.run(
    [
      sys.executable,
      '-m',
      'transformer.translate',
      f'--workdir={workdir}',
      '--beam_size=2',
    ],
    input=SENTENCES[0] + '\n',
    capture_output=True,
    text=True,
    cwd=tiny_run.ROOT,
    env=tiny_run.env(),
    timeout=300,
  )
  assert translated.returncode == 0 and len(translated.stdout.splitlines()) == 1, translated.stderr
  assert 'resumed' not in result.stdout


@pytest.mark.slow
def test_translate_cli_with_a_pretrained_directory(pretrained):
  directory, hf, hf_tokenizer = pretrained
  short = [s for s in SENTENCES if len(hf_tokenizer(s)['input_ids']) <= 30][:4]  # not truncated
  command = [
    sys.executable,
    '-m',
    'transformer.translate',
    f'--pretrained={directory}',
    '--beam_size=4',
    '--length_penalty=1.0',
    '--length_normalization=hf',
    '--max_new_tokens=20',
  ]
  result = subprocess.run(
    command,
    input='\n'.join(short) + '\n',
    capture_output=True,
    text=True,
    cwd=tiny_run.ROOT,
    env=tiny_run.env(),
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  expected = _generated(
    hf,
    _hf_batch(hf_tokenizer, short),
    num_beams=4,
    length_penalty=1.0,
    forced_eos_token_id=hf.config.eos_token_id,  # the directory's generation config asks for it
  )
  assert len(short) == 4
  assert result.stdout.splitlines() == hf_tokenizer.batch_decode(expected, skip_special_tokens=True)


@pytest.fixture(scope='module')
def long_talking(tmp_path_factory):
  """A fixture whose EOS is unlikely, so that sentences reach a short length limit."""
  directory = marian_fixture.build(str(tmp_path_factory.mktemp('marian_long')), eos_bias=1.0)
  hf = transformers.MarianMTModel.from_pretrained(directory).eval()
  return directory, hf, transformers.MarianTokenizer.from_pretrained(directory)


@pytest.mark.parametrize('beam_size', [1, 4])
def test_forced_eos_at_the_length_limit_equals_transformers(long_talking, beam_size):
  """opus-mt's generation config forces EOS at the last allowed step: a sentence that reaches
  the limit ends with EOS there, as in transformers' generate, instead of one token later."""
  directory, hf, hf_tokenizer = long_talking
  model, _ = marian.load(directory)
  assert marian.generation_defaults(directory)['forced_eos']
  batch = _hf_batch(hf_tokenizer)
  eos, pad = hf.config.eos_token_id, hf.config.pad_token_id
  with torch.no_grad():
    expected = hf.generate(
      **batch,
      max_new_tokens=6,
      do_sample=False,
      early_stopping=False,
      num_beams=beam_size,
      length_penalty=1.0,
      forced_eos_token_id=eos,
      bad_words_ids=[[pad]],
    ).numpy()[:, 1:]
  tokens = np.asarray(
    search.generate(
      model,
      batch['input_ids'].numpy().astype(np.int32),
      beam_size=beam_size,
      length_penalty=1.0,
      max_new_tokens=6,
      length_normalization='hf',
      forced_eos=True,
    )
  )
  width = max(tokens.shape[1], expected.shape[1])
  padded = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=pad)
  assert (expected[:, 5] == eos).any()  # some sentences reach the limit and end with EOS there
  np.testing.assert_array_equal(padded(tokens), padded(expected))
