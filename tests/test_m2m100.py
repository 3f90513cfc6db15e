"""Hugging Face M2M100 models (NLLB-200, M2M100): exact loading, tokenizers, generation with the
target language forced first, sharded and bfloat16 loading, export back, fine-tuning.

The fixtures are built offline with transformers and torch (test-only dependencies): tiny random
M2M100ForConditionalGeneration models with NLLB's and M2M100's configurations and transformers'
own NllbTokenizer / M2M100Tokenizer over a SentencePiece model trained on the embedded corpus.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import hf_bart_fixture, m2m100_fixture, tiny_run
from transformer.decoding import search, translation
from transformer.decoding.batch import Batch
from transformer.input_pipeline import pipeline
from transformer.pretrained import families as pretrained, m2m100

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

LANGUAGES = {'nllb': ('eng_Latn', 'fra_Latn', 'deu_Latn'), 'm2m100': ('__en__', '__fr__', '__de__')}
SENTENCES = [s for s, _ in tiny_run.embedded_pairs('test', 8)] + [
  'And God said, Let there be light.',
  'He wept.',
  'ünïcödé ∑ unknown pieces',
]


@pytest.fixture(scope='module', params=['nllb', 'm2m100'])
def family(tmp_path_factory, request):
  kind = request.param
  directory = m2m100_fixture.build(str(tmp_path_factory.mktemp(kind)), kind)
  hf = transformers.M2M100ForConditionalGeneration.from_pretrained(directory).eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  source, target, _ = LANGUAGES[kind]
  hf_tokenizer.src_lang = source if kind == 'nllb' else source.strip('_')
  hf_tokenizer.tgt_lang = target if kind == 'nllb' else target.strip('_')
  return kind, directory, hf, hf_tokenizer


def _load(family, target=None, **kwargs):
  kind, directory, _, _ = family
  source, default_target, _ = LANGUAGES[kind]
  return m2m100.load(directory, source_lang=source, target_lang=target or default_target, **kwargs)


def _batch(hf_tokenizer, sentences=SENTENCES):
  return hf_bart_fixture.hf_batch(hf_tokenizer, sentences, max_length=40)


def test_tokenizer_gives_transformers_ids(family):
  _, _, _, hf_tokenizer = family
  _, tokenizer = _load(family)
  eos = tokenizer.special_ids['eos_id']
  assert tokenizer.end_ids('source') == tokenizer.end_ids('target') == [eos]
  for sentence in SENTENCES:
    assert tokenizer.encode(sentence) + [eos] == hf_tokenizer(sentence)['input_ids'], sentence
    labels = hf_tokenizer(text_target=sentence)['input_ids']
    assert tokenizer.encode(sentence, 'target') + [eos] == labels, sentence
  ids = hf_tokenizer(text_target=SENTENCES[0])['input_ids']
  # (transformers' M2M100Tokenizer built from files keeps its language token in the text; the
  # hub's skips it, as this package does)
  assert tokenizer.decode(ids) == hf_tokenizer.decode(ids[1:], skip_special_tokens=True)


def test_logits_equal_transformers_on_a_padded_batch(family):
  _, _, hf, hf_tokenizer = family
  model, tokenizer = _load(family)
  batch = _batch(hf_tokenizer)
  assert (batch['attention_mask'] == 0).any()  # padded rows
  first = tokenizer.forced_bos_id
  decoder_input = torch.tensor([[2, first, 50, 60, 70, 80]] * len(SENTENCES))  # starts with EOS
  with torch.no_grad():
    expected = hf(**batch, decoder_input_ids=decoder_input).logits.numpy()
  logits = np.asarray(
    model(jnp.asarray(batch['input_ids'].numpy()), jnp.asarray(decoder_input.numpy()))
  )
  np.testing.assert_allclose(logits, expected, atol=1e-4)


def _generated(hf, batch, forced_bos, **kwargs):
  return hf_bart_fixture.generated(hf, batch, forced_bos_token_id=forced_bos, **kwargs)


def _same(tokens, expected, pad=1):
  width = max(tokens.shape[1], expected.shape[1])
  padded = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=pad)
  np.testing.assert_array_equal(padded(tokens), padded(expected))


@pytest.mark.parametrize('beam_size', [1, 4])
def test_generation_equals_transformers_with_the_target_language_forced(family, beam_size):
  _, _, hf, hf_tokenizer = family
  model, tokenizer = _load(family)
  batch = _batch(hf_tokenizer)
  first = tokenizer.forced_bos_id
  expected = _generated(hf, batch, first, num_beams=beam_size, length_penalty=1.0)
  src = batch['input_ids'].numpy().astype(np.int32)
  tokens = np.asarray(
    search.generate(
      model,
      Batch.of(src, forced_bos=np.full(len(src), first)),
      beam_size=beam_size,
      length_penalty=1.0,
      max_new_tokens=20,
      length_normalization='hf',
    )
  )
  assert (expected[:, 0] == first).all() and (expected == 2).any()  # some end before the limit
  _same(tokens, expected)


def test_one_source_into_two_languages_as_transformers(family):
  kind, _, hf, hf_tokenizer = family
  model, tokenizer = _load(family)
  short = [s for s in SENTENCES if len(hf_tokenizer(s)['input_ids']) <= 40][:6]
  for target in LANGUAGES[kind][1:]:
    pair = tokenizer.with_languages(LANGUAGES[kind][0], target)
    expected = _generated(hf, _batch(hf_tokenizer, short), pair.forced_bos_id, num_beams=4)
    ours = translation.translate(
      model,
      pair,
      short,
      beam_size=4,
      length_penalty=1.0,
      length_normalization='hf',
      max_new_tokens=20,
    )
    assert ours == hf_tokenizer.batch_decode(expected[:, 1:], skip_special_tokens=True), target


def test_nllb_legacy_source_convention_as_transformers(family, tmp_path):
  kind, directory, hf, _ = family
  source, target, _ = LANGUAGES[kind]
  if kind == 'm2m100':
    with pytest.raises(m2m100.M2M100Error, match='legacy_behaviour is an NLLB tokenizer option'):
      m2m100.load_tokenizer(directory, source, target, legacy_behaviour=True)
    return
  legacy = transformers.AutoTokenizer.from_pretrained(
    directory, src_lang=source, tgt_lang=target, legacy_behaviour=True
  )
  tokenizer = m2m100.load_tokenizer(directory, source, target, legacy_behaviour=True)
  language = tokenizer.languages[source]
  assert tokenizer.end_ids('source') == [2, language]
  for sentence in SENTENCES:
    ids = legacy(sentence)['input_ids']
    assert ids[-2:] == [2, language] and tokenizer.encode(sentence) + [2, language] == ids
  # The directory's tokenizer_config.json field selects it too; the target side keeps the
  # language first, as forced decoding starts with it.
  copy = tmp_path / 'legacy'
  copy.mkdir()
  for name in os.listdir(directory):
    os.link(os.path.join(directory, name), copy / name)
  settings = json.loads((copy / 'tokenizer_config.json').read_text())
  (copy / 'tokenizer_config.json').unlink()
  (copy / 'tokenizer_config.json').write_text(json.dumps({**settings, 'legacy_behaviour': True}))
  from_file = pretrained.load_tokenizer(str(copy), source, target)
  assert from_file.legacy_behaviour and from_file.loader().legacy_behaviour
  pairs, _ = pipeline.tokenize_pairs([(SENTENCES[0], SENTENCES[1])], from_file, max_length=64)
  assert list(pairs[0]['inputs']) == from_file.encode(SENTENCES[0]) + [2, language]
  assert list(pairs[0]['targets'][:1]) == [from_file.forced_bos_id]
  # translate encodes legacy sources as transformers does, and so decodes as it does.
  model, _ = _load(family)
  short = SENTENCES[:4]
  batch = legacy(short, return_tensors='pt', padding=True)
  expected = _generated(hf, batch, tokenizer.forced_bos_id, num_beams=1)
  ours = translation.translate(model, tokenizer, short, beam_size=1, max_new_tokens=20)
  assert ours == legacy.batch_decode(expected[:, 1:], skip_special_tokens=True)


def test_a_language_the_model_does_not_have_is_one_line_naming_the_nearest(family):
  kind, directory, _, _ = family
  wrong = 'fra_Latm' if kind == 'nllb' else '__fre__'
  with pytest.raises(m2m100.M2M100Error, match=r"language '.*' is not one of the model's") as error:
    m2m100.load(directory, source_lang=LANGUAGES[kind][0], target_lang=wrong)
  assert LANGUAGES[kind][1] in str(error.value).split('nearest: ')[1].split(', ')[:3]
  assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match='give the source and target languages'):
    pretrained.load(directory)


def test_sharded_and_bfloat16_loads(family, tmp_path):
  _, directory, hf, hf_tokenizer = family
  sharded = str(tmp_path / 'sharded')
  hf.save_pretrained(sharded, max_shard_size='20KB')
  assert os.path.exists(os.path.join(sharded, 'model.safetensors.index.json'))
  for name in os.listdir(directory):
    if not os.path.exists(os.path.join(sharded, name)):
      os.link(os.path.join(directory, name), os.path.join(sharded, name))
  model, tokenizer = _load(family)
  kind = family[0]
  again, _ = m2m100.load(sharded, source_lang=LANGUAGES[kind][0], target_lang=LANGUAGES[kind][1])
  src = _batch(hf_tokenizer)['input_ids'].numpy()
  decoder_input = jnp.asarray([[2, tokenizer.forced_bos_id, 50, 60]] * len(src))
  full = np.asarray(model(jnp.asarray(src), decoder_input))
  np.testing.assert_array_equal(np.asarray(again(jnp.asarray(src), decoder_input)), full)
  half, _ = _load(family, param_dtype='bfloat16', dtype='bfloat16')
  assert half.embed.table.embedding[...].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half(jnp.asarray(src), decoder_input)), full, atol=0.3)


def test_export_back_to_a_directory_transformers_loads(family, tmp_path):
  _, _, _, hf_tokenizer = family
  model, tokenizer = _load(family)
  out = str(tmp_path / 'exported')
  pretrained.save(model, tokenizer, out)
  reloaded = transformers.M2M100ForConditionalGeneration.from_pretrained(out).eval()
  batch = _batch(hf_tokenizer)
  decoder_input = torch.tensor([[2, tokenizer.forced_bos_id, 50, 60]] * len(SENTENCES))
  with torch.no_grad():
    theirs = reloaded(**batch, decoder_input_ids=decoder_input).logits.numpy()
  ours = np.asarray(model(jnp.asarray(batch['input_ids'].numpy()), jnp.asarray(decoder_input)))
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  again = transformers.AutoTokenizer.from_pretrained(out)
  assert again(SENTENCES[0])['input_ids'][1:] == hf_tokenizer(SENTENCES[0])['input_ids'][1:]


@pytest.mark.slow
def test_translate_cli_and_fine_tuning(family, tmp_path):
  kind, directory, hf, hf_tokenizer = family
  source, target, _ = LANGUAGES[kind]
  short = [s for s in SENTENCES if len(hf_tokenizer(s)['input_ids']) <= 30][:3]
  command = [sys.executable, '-m', 'transformer.translate', f'--pretrained={directory}']
  run = lambda args, text: subprocess.run(
    command + args, input=text, capture_output=True, text=True, cwd=tiny_run.ROOT,
    env=tiny_run.env(), timeout=300,
  )  # fmt: skip
  flags = [f'--source_lang={source}', f'--target_lang={target}', '--beam_size=4']
  flags += ['--length_penalty=1.0', '--length_normalization=hf', '--max_new_tokens=20']
  result = run(flags, '\n'.join(short) + '\n')
  assert result.returncode == 0, result.stderr[-3000:]
  expected = _generated(
    hf, _batch(hf_tokenizer, short), _load(family)[1].forced_bos_id, num_beams=4
  )
  assert result.stdout.splitlines() == hf_tokenizer.batch_decode(
    expected[:, 1:], skip_special_tokens=True
  )
  missing = run([], 'hello\n')
  assert missing.returncode == 2 and 'give the source and target languages' in missing.stderr
  # Fine-tuning: the language pair, in the model's codes, names the TSV columns.
  corpus = tiny_run.write_tiny_corpus(str(tmp_path / 'corpus'), train=200, eval_=8)
  for path in corpus.values():
    lines = open(path, encoding='utf-8').read().split('\n')
    header = lines[0].split('\t')
    lines[0] = '\t'.join({'en': source, 'fr': target}.get(c, c) for c in header)
    open(path, 'w', encoding='utf-8').write('\n'.join(lines))
  overrides = tiny_run.tiny_overrides(
    corpus, init_from=directory, num_train_steps=12, log_every=4, eval_every=12, max_length=48,
    warmup_steps=4, learning_rate_scale=3.0, source_lang=source, target_lang=target,
  )  # fmt: skip
  workdir = str(tmp_path / 'run')
  tiny_run.run_train(workdir, overrides)
  losses = [r['train_loss'] for r in tiny_run.metrics(workdir) if 'train_loss' in r]
  assert losses[-1] < losses[0], losses
  tuned = subprocess.run(
    [sys.executable, '-m', 'transformer.translate', f'--workdir={workdir}', '--beam_size=1'],
    input=short[0] + '\n', capture_output=True, text=True, cwd=tiny_run.ROOT, env=tiny_run.env(),
    timeout=300,
  )  # fmt: skip
  assert tuned.returncode == 0 and len(tuned.stdout.splitlines()) == 1, tuned.stderr[-3000:]
  # The fine-tuned run exports back to a directory transformers loads, with the run's weights.
  exported = str(tmp_path / 'exported')
  export = lambda fmt, out: subprocess.run(
    [sys.executable, '-m', 'transformer.export', f'--workdir={workdir}', f'--format={fmt}',
     f'--out={out}'], capture_output=True, text=True, cwd=tiny_run.ROOT, env=tiny_run.env(),
    timeout=300,
  )  # fmt: skip
  written = export('m2m100', exported)
  assert written.returncode == 0, written.stderr[-3000:]
  reloaded = transformers.M2M100ForConditionalGeneration.from_pretrained(exported).eval()
  from transformer.training import workdir as workdir_lib

  tuned_model, _, _ = workdir_lib.load_model(workdir)
  batch = _batch(hf_tokenizer, short)
  decoder_input = torch.tensor([[2, _load(family)[1].forced_bos_id, 50]] * len(short))
  with torch.no_grad():
    theirs = reloaded(**batch, decoder_input_ids=decoder_input).logits.numpy()
  ours = np.asarray(
    tuned_model(jnp.asarray(batch['input_ids'].numpy()), jnp.asarray(decoder_input))
  )
  np.testing.assert_allclose(theirs, ours, atol=1e-4)
  refused = export('ctranslate2', str(tmp_path / 'ct2'))
  assert refused.returncode == 2 and 'export it with --format=m2m100' in refused.stderr


def test_beam_scores_equal_transformers_where_the_pad_token_is_likely(family):
  """transformers' bad_words_ids removes pad's probability without renormalising the others;
  with 'hf' normalisation the search does the same, so a hypothesis scores what `generate`
  scores it, even where the (random) model gives pad real probability."""
  kind, _, hf, _ = family
  model, tokenizer = _load(family, target=LANGUAGES[kind][2])
  src = np.array([tokenizer.encode('The Lord is my shepherd; I shall not want.') + [2]], np.int32)
  with torch.no_grad():
    expected = hf.generate(
      input_ids=torch.tensor(src), forced_bos_token_id=tokenizer.forced_bos_id, num_beams=4,
      length_penalty=1.0, max_new_tokens=20, do_sample=False, early_stopping=False,
      bad_words_ids=[[1]], output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
  tokens, scores, _ = search.generate_n_best(
    model, Batch.of(src, forced_bos=np.full(1, tokenizer.forced_bos_id)), n_best=1, beam_size=4,
    length_penalty=1.0, length_normalization='hf', max_new_tokens=20,
  )  # fmt: skip
  _same(np.asarray(tokens)[:, 0], expected.sequences.numpy()[:, 1:])
  np.testing.assert_allclose(np.asarray(scores)[:, 0], expected.sequences_scores.numpy(), atol=1e-4)
