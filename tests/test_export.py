"""Models leaving the package: CTranslate2 models that compute what ours compute, jax.export
artifacts that run without the package, and the export command's refusals."""

import json
import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import ctranslate2_side
from tests.helpers import configs, tiny_run, trained_model
from transformer import Transformer
from transformer.decoding import translation
from transformer.export import ctranslate2_model, stablehlo
from transformer.export.__main__ import tokenizer_files
from transformer.input_pipeline import tokenizer as tokenizer_lib
from transformer.model.encoder_decoder import shift_right

ctranslate2 = pytest.importorskip('ctranslate2')

PAIRS = tiny_run.embedded_pairs('test', 60)
SENTENCES = [s for s, _ in PAIRS] + [
  'Go in peace.',
  'He wept.',
  'And God said, Let there be light.',
]


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.model')
  sentences = [s for pair in tiny_run.embedded_pairs('train', 600) for s in pair]
  return tokenizer_lib.train_tokenizer(path, sentences, vocab_size=200)


def _decisive_model(config, seed: int = 0) -> Transformer:
  """A random model whose parameters are large enough that its outputs vary from token to token
  and from sentence to sentence (the default init gives near-uniform, repetitive outputs)."""
  model = Transformer(config, rngs=nnx.Rngs(seed))
  params = nnx.state(model, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(params))))
  nnx.update(
    model,
    jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape, x.dtype), params),
  )
  model.eval()
  return model


def _export(model, tokenizer, directory, **kwargs) -> str:
  files = tokenizer_files(tokenizer, with_vocab=False)
  return ctranslate2_model.save(model, tokenizer, files, str(directory), **kwargs)


VARIANTS = {
  'pre-LN': dict(norm_position='pre'),
  'post-LN, swish, halves, eps 1e-5, logits bias': dict(
    activation='swish', sinusoid_layout='halves', layer_norm_epsilon=1e-5, logits_bias=True
  ),
  'learned positions, gelu, separate vocabularies, unscaled': dict(
    norm_position='pre',
    positional_encoding='learned',
    activation='gelu',
    share_embeddings=False,
    target_vocab_size=200,
    scale_embedding=False,
  ),
}


@pytest.mark.parametrize('variant', VARIANTS)
def test_ctranslate2_scores_every_target_token_as_we_do(tokenizer, tmp_path, variant):
  """Teacher-forced log-probabilities of CTranslate2's score_batch equal ours, token by token,
  for every architecture option this package trains (positions, norms, activations, vocabularies)."""
  config = configs.tiny_config(vocab_size=tokenizer.vocab_size, max_positions=128)
  model = _decisive_model(config.replace(**VARIANTS[variant]))
  if model.logits_bias is not None:
    model.logits_bias[...] = jax.random.normal(jax.random.key(5), model.logits_bias.shape)
  translator = ctranslate2.Translator(str(_export(model, tokenizer, tmp_path / 'ct2')))
  sources = [tokenizer.encode(s)[:40] for s, _ in PAIRS]
  targets = [tokenizer.encode(t)[:30] + [config.eos_id] for _, t in PAIRS]
  piece = tokenizer.processor.id_to_piece
  scored = translator.score_batch(
    [[piece(i) for i in s] for s in sources], [[piece(i) for i in t[:-1]] for t in targets]
  )
  src = np.full((len(sources), 48), config.pad_id, np.int32)
  tgt = np.full((len(targets), 32), config.pad_id, np.int32)
  for row, (s, t) in enumerate(zip(sources, targets)):
    src[row, : len(s) + 1], tgt[row, : len(t)] = s + [config.eos_id], t
  logits = model(jnp.asarray(src), shift_right(jnp.asarray(tgt), config.bos_id))
  logits = jnp.where(jnp.arange(logits.shape[-1]) == config.pad_id, -jnp.inf, logits)
  ours = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tgt[..., None], -1)[..., 0]
  for row, result in enumerate(scored):
    np.testing.assert_allclose(result.log_probs, ours[row, : len(targets[row])], atol=2e-4)


@pytest.fixture(scope='module')
def exported(tokenizer, tmp_path_factory):
  """A pre-LN model (the default recipe's kind) trained for a few hundred steps, exported."""
  config = configs.tiny_config(vocab_size=tokenizer.vocab_size, max_positions=128)
  model = trained_model.train(config.replace(norm_position='pre'), tokenizer, steps=300)
  directory = _export(model, tokenizer, tmp_path_factory.mktemp('ct2') / 'model')
  return model, directory


@pytest.mark.parametrize('beam_size, alpha, limit', [(1, 0.6, 24), (4, 0.6, 40), (4, 2.0, 40)])
def test_ctranslate2_translates_to_our_tokens(tokenizer, exported, beam_size, alpha, limit):
  """Greedy, and beam 4 under the length normalisation both have (log P / length^alpha, stopping
  once 4 hypotheses have ended: --length_normalization=ctranslate2), give the same tokens. (With
  alpha 2 and 40 tokens, 'hf' stopping gives another output for one of these sentences.)"""
  model, directory = exported
  ours = translation.translate(
    model,
    tokenizer,
    SENTENCES,
    beam_size=beam_size,
    length_penalty=alpha,
    max_new_tokens=limit,
    length_normalization='ctranslate2',
  )
  translator = ctranslate2.Translator(directory)
  theirs = ctranslate2_side.translate(
    translator, tokenizer, model.config, SENTENCES, beam_size, alpha, limits=[limit] * 63
  )
  assert len(set(ours)) > len(SENTENCES) // 2  # the outputs differ from sentence to sentence
  assert ours == theirs


def test_ctranslate2_int8_is_smaller_and_mostly_agrees(tokenizer, exported, tmp_path):
  """int8 weights: a model.bin under half the size that translates most sentences alike (the
  BLEU comparison on a trained model is in benchmarks.decode_vs_ctranslate2)."""
  model, _ = exported
  outputs = {}
  for quantization in ('int8', None):
    directory = _export(model, tokenizer, tmp_path / str(quantization), quantization=quantization)
    translator = ctranslate2.Translator(directory)
    outputs[quantization] = ctranslate2_side.translate(
      translator, tokenizer, model.config, SENTENCES, 1, 0.6, limits=[6] * 63
    )
  sizes = {q: os.path.getsize(tmp_path / str(q) / 'model.bin') for q in ('int8', None)}
  assert sizes['int8'] < sizes[None] / 2
  assert sum(a == b for a, b in zip(outputs['int8'], outputs[None])) >= len(SENTENCES) // 2


def test_the_export_refuses_what_ctranslate2_cannot_express(tokenizer, tmp_path):
  config = configs.tiny_config(vocab_size=tokenizer.vocab_size, decoder_causal_mask=False)
  with pytest.raises(ctranslate2_model.ExportError, match='decoder_causal_mask=False'):
    _export(Transformer(config, rngs=nnx.Rngs(0)), tokenizer, tmp_path / 'x')
  assert not os.path.exists(tmp_path / 'x')


def test_stablehlo_artifacts_translate_without_the_package(tokenizer, exported, tmp_path):
  """The artifacts, called by serve.py in a process that cannot import `transformer` (or flax),
  give the tokens `translate` gives, greedy and beam; the batch size is free."""
  model, _ = exported
  directory = str(tmp_path / 'hlo')
  stablehlo.save(
    model,
    tokenizer_files(tokenizer, with_vocab=True),
    directory,
    beam_sizes=(1, 2),
    source_lengths=(16, 48),
    extra_length=6,
  )
  sentences = [s for s in SENTENCES if len(tokenizer.encode(s)) < 47]
  expected = {
    beam: translation.translate(model, tokenizer, sentences, beam_size=beam, extra_length=6)
    for beam in (1, 2)
  }
  script = (
    'import sys\n'
    'class Block:\n'
    '  def find_spec(self, name, path=None, target=None):\n'
    "    if name.split('.')[0] in ('transformer', 'flax'): raise ImportError(name)\n"
    'sys.meta_path.insert(0, Block())\n'
    f'sys.path.insert(0, {directory!r})\n'
    'import json, serve\n'
    f'translator = serve.Translator({directory!r})\n'
    f'sentences = {sentences!r}\n'
    'print(json.dumps({b: translator.translate(sentences, beam_size=b, batch_size=5) for b in (1, 2)}))\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', script], capture_output=True, text=True, cwd=str(tmp_path), timeout=300
  )
  assert result.returncode == 0, result.stderr[-2000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  assert got == {str(beam): outputs for beam, outputs in expected.items()}
  manifest = json.load(open(os.path.join(directory, 'manifest.json')))
  assert {(a['beam_size'], a['source_length']) for a in manifest['artifacts']} == {
    (1, 16),
    (1, 48),
    (2, 16),
    (2, 48),
  }
  assert manifest['platforms'] == ['cpu', 'cuda', 'tpu']


def test_a_marian_model_exports_as_ctranslate2s_own_converter_converts_it(tmp_path):
  """opus-mt through our export and through CTranslate2's transformers converter: the same
  translations (greedy and beam), and both the same as ours."""
  pytest.importorskip('transformers')
  from tests.helpers import marian_fixture
  from transformer.pretrained import marian

  directory = marian_fixture.build(str(tmp_path / 'opus-mt'), eos_bias=1.0, zero_pad_row=True)
  model, tokenizer = marian.load(directory)
  ours = _export(model, tokenizer, tmp_path / 'ours')
  theirs = ctranslate2.converters.TransformersConverter(directory).convert(str(tmp_path / 'theirs'))
  for beam_size in (1, 4):
    outputs = [
      ctranslate2_side.translate(
        ctranslate2.Translator(path),
        tokenizer,
        model.config,
        SENTENCES,
        beam_size,
        1.0,
        limits=[20] * len(SENTENCES),
        source_suffix=suffix,
      )
      for path, suffix in ((ours, []), (theirs, ['</s>']))
    ]
    expected = translation.translate(
      model,
      tokenizer,
      SENTENCES,
      beam_size=beam_size,
      length_penalty=1.0,
      max_new_tokens=20,
      length_normalization='ctranslate2',
    )
    assert outputs[0] == outputs[1] == expected
    assert len(set(expected)) > 3
