import gzip
import os
import subprocess
import sys
import textwrap

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import configs
from transformer import Transformer, TransformerConfig
from transformer.input_pipeline import corpus, datasets, pipeline
from transformer.input_pipeline import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def embedded_train(tfds_dir):
  pairs, _ = datasets.read_split('bible_en_fr', 'train', 'en', 'fr', data_dir=tfds_dir)
  return pairs


@pytest.fixture(scope='session')
def small_tokenizer(tmp_path_factory, embedded_train):
  path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.model')
  sentences = [text for pair in embedded_train[:4000] for text in pair]
  return tokenizer_lib.train_tokenizer(path, sentences, vocab_size=600)


def test_embedded_dataset_has_the_documented_sizes_offline(tfds_dir, embedded_train):
  assert len(embedded_train) == 29_404
  for split, expected in (('validation', 948), ('test', 750)):
    pairs, report = datasets.read_split('bible_en_fr', split, 'en', 'fr', data_dir=tfds_dir)
    assert len(pairs) == expected, report
  assert all(src and tgt for src, tgt in embedded_train)
  # Direction comes from the config: fr -> en swaps the sides.
  swapped, _ = datasets.read_split('bible_en_fr', 'test', 'fr', 'en', data_dir=tfds_dir)
  english, _ = datasets.read_split('bible_en_fr', 'test', 'en', 'fr', data_dir=tfds_dir)
  assert swapped[0] == english[0][::-1]


def test_unknown_language_is_a_clear_error(tfds_dir):
  with pytest.raises(ValueError, match="no language 'de'"):
    datasets.read_split('bible_en_fr', 'test', 'en', 'de', data_dir=tfds_dir)


def test_tokenizer_round_trip_and_special_ids(small_tokenizer, embedded_train):
  tok = small_tokenizer
  for src, tgt in embedded_train[5000:5200]:  # text the tokenizer was not trained on
    for text in (src, tgt):
      assert tok.decode(tok.encode(text)) == tok.normalize(text)
  config = TransformerConfig(vocab_size=tok.vocab_size)
  assert (config.pad_id, config.bos_id, config.eos_id) == (
    tok.processor.pad_id(),
    tok.processor.bos_id(),
    tok.processor.eos_id(),
  )
  ids = tok.encode('In the beginning') + [tokenizer_lib.EOS_ID, 17, 18]
  assert tok.decode([tokenizer_lib.BOS_ID] + ids) == tok.normalize(
    'In the beginning'
  )  # stops at EOS


def test_tokenizer_is_reused_not_retrained(tmp_path):
  path = str(tmp_path / 'tokenizer.model')
  words = (
    'the cat sat on a mat while le chat est sur tapis quick brown fox jumps over lazy dog'.split()
  )
  sentences = [
    ' '.join(words[(i * 7 + j) % len(words)] for j in range(i % 9 + 3)) for i in range(400)
  ]
  calls = []

  def source():
    calls.append(1)
    return iter(sentences)

  _, trained = tokenizer_lib.load_or_train_tokenizer(path, source, vocab_size=40)
  mtime = os.path.getmtime(path)
  _, trained_again = tokenizer_lib.load_or_train_tokenizer(path, source, vocab_size=40)
  assert trained and not trained_again and len(calls) == 1 and os.path.getmtime(path) == mtime
  with pytest.raises(ValueError, match='vocabulary of 40'):
    tokenizer_lib.load_or_train_tokenizer(path, source, vocab_size=45)


def _pairs(n=60, seed=0):
  rng = np.random.default_rng(seed)
  inputs = [
    np.append(rng.integers(4, 50, size=rng.integers(1, 15)), tokenizer_lib.EOS_ID).astype(np.int32)
    for _ in range(n)
  ]
  targets = [
    np.append(rng.integers(4, 50, size=rng.integers(1, 15)), tokenizer_lib.EOS_ID).astype(np.int32)
    for _ in range(n)
  ]
  return pipeline.TokenizedPairs(inputs, targets), inputs, targets


def _unpack(batches):
  """Per-example (inputs, targets) tuples recovered from packed batches via segment ids."""
  examples = []
  for batch in batches:
    for row in range(batch['inputs'].shape[0]):
      segments = batch['inputs_segment_ids'][row]
      for segment in range(1, segments.max() + 1):
        parts = []
        for name in ('inputs', 'targets'):
          mask = batch[f'{name}_segment_ids'][row] == segment
          positions = batch[f'{name}_positions'][row][mask]
          np.testing.assert_array_equal(positions, np.arange(mask.sum()))  # restart at 0, +1 each
          assert mask.sum() > 0
          parts.append(tuple(batch[name][row][mask].tolist()))
        examples.append(tuple(parts))
      # Padding: token 0 exactly where the segment id is 0.
      for name in ('inputs', 'targets'):
        np.testing.assert_array_equal(batch[name][row] == 0, batch[f'{name}_segment_ids'][row] == 0)
  return examples


def test_packing_loses_and_duplicates_nothing():
  pairs, inputs, targets = _pairs()
  batches = list(
    pipeline.train_dataset(pairs, batch_size=4, max_length=32, seed=3, pack=True, num_epochs=1)
  )
  assert all(b['inputs'].shape[1] == 32 for b in batches)
  unpacked = _unpack(batches)
  expected = [(tuple(i.tolist()), tuple(t.tolist())) for i, t in zip(inputs, targets)]
  assert sorted(unpacked) == sorted(expected)
  assert len(batches) < len(expected) / 4  # several examples per row, really packed


def test_packed_pipeline_row_gives_the_same_logits_as_examples_alone():
  pairs, _, _ = _pairs(n=12, seed=1)
  batch = next(
    iter(
      pipeline.train_dataset(pairs, batch_size=2, max_length=40, seed=0, pack=True, num_epochs=1)
    )
  )
  from transformer import shift_right

  config = configs.tiny_config(vocab_size=50)
  model = Transformer(config, rngs=nnx.Rngs(0))
  dec_in = shift_right(
    jnp.asarray(batch['targets']), config.bos_id, jnp.asarray(batch['targets_segment_ids'])
  )
  packed = model(
    batch['inputs'],
    dec_in,
    src_segments=batch['inputs_segment_ids'],
    tgt_segments=batch['targets_segment_ids'],
    src_positions=batch['inputs_positions'],
    tgt_positions=batch['targets_positions'],
  )
  row = 0
  segments = batch['targets_segment_ids'][row]
  assert segments.max() >= 2
  for segment in range(1, segments.max() + 1):
    src = batch['inputs'][row][batch['inputs_segment_ids'][row] == segment][None]
    tgt_mask = segments == segment
    tgt = batch['targets'][row][tgt_mask][None]
    alone = model(src, jnp.concatenate([jnp.full((1, 1), config.bos_id), tgt[:, :-1]], 1))
    np.testing.assert_allclose(np.asarray(packed[row])[tgt_mask], alone[0], atol=1e-5)


@pytest.mark.parametrize('hosts', [2, 4])
def test_host_shards_are_disjoint_and_cover_the_data(hosts):
  pairs, inputs, targets = _pairs(n=41)
  seen = []
  for index in range(hosts):
    batches = list(
      pipeline.train_dataset(
        pairs,
        batch_size=3,
        max_length=20,
        seed=0,
        pack=False,
        num_epochs=1,
        shard_index=index,
        shard_count=hosts,
      )
    )
    shard = [e for e in _unpack(batches)]
    assert shard, f'host {index} got no data'
    seen.append(set(shard))
  for a in range(hosts):
    for b in range(a + 1, hosts):
      assert not seen[a] & seen[b]
  expected = {(tuple(i.tolist()), tuple(t.tolist())) for i, t in zip(inputs, targets)}
  assert set().union(*seen) == expected


def test_shuffle_is_deterministic_for_a_seed_and_differs_across_epochs():
  pairs, _, _ = _pairs(n=30)
  take = lambda seed: [
    b['inputs'].tolist()
    for b in pipeline.train_dataset(
      pairs, batch_size=2, max_length=20, seed=seed, pack=False, num_epochs=2
    )
  ]
  assert take(5) == take(5) and take(5) != take(6)
  first_epoch, second_epoch = take(5)[:15], take(5)[15:]
  assert first_epoch != second_epoch


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from transformer import checkpoints
    from transformer.input_pipeline import pipeline
    from transformer.training import TrainState
    from tests.test_input_pipeline import _pairs
    pairs, _, _ = _pairs(n=50)
    it = pipeline.TrainBatches(pairs, batch_size=3, max_length=24, seed=7, pack=True, pad_id=0,
                               shard_index=0, shard_count=1)
    ckpt = checkpoints.Checkpointer(sys.argv[2], keep_best=False)
    state = TrainState(step=np.zeros((), np.int32), params={{'w': np.ones(3, np.float32)}},
                       opt_state={{'m': np.zeros(3, np.float32)}}, rng=np.zeros(2, np.uint32))
    if sys.argv[1] == 'save':
      for _ in range(5):
        next(it)
      ckpt.save(5, state, it, force=True)
    else:
      it.restore(ckpt.restore(state, with_data=True).data)
    ckpt.wait(); ckpt.close()
    print(json.dumps([next(it)['inputs'].tolist() for _ in range(4)]))
""")


def test_iterator_resumes_exactly_in_a_fresh_process(tmp_path):
  script = tmp_path / 'resume.py'
  script.write_text(RESUME_SCRIPT.format(root=ROOT))
  run = lambda mode: (
    subprocess.run(
      [sys.executable, str(script), mode, str(tmp_path / 'ckpt')],
      check=True,
      capture_output=True,
      text=True,
      cwd=ROOT,
    )
    .stdout.strip()
    .splitlines()[-1]
  )
  after_save = run('save')
  after_restore = run('restore')
  assert after_save == after_restore
  # And they are the batches an uninterrupted iterator yields after 5.
  pairs, _, _ = _pairs(n=50)
  it = iter(pipeline.train_dataset(pairs, batch_size=3, max_length=24, seed=7, pack=True))
  for _ in range(5):
    next(it)
  import json

  assert json.loads(after_restore) == [next(it)['inputs'].tolist() for _ in range(4)]


def test_overlong_examples_are_dropped_or_truncated_and_counted(small_tokenizer):
  pairs = [('short one', 'court'), ('a ' * 80, 'b ' * 3), ('fine', 'bien ' * 70)]
  dropped, stats = pipeline.tokenize_pairs(pairs, small_tokenizer, max_length=20, overlong='drop')
  assert (len(dropped), stats.dropped_overlong, stats.truncated) == (1, 2, 0)
  truncated, stats = pipeline.tokenize_pairs(
    pairs, small_tokenizer, max_length=20, overlong='truncate'
  )
  assert (len(truncated), stats.dropped_overlong, stats.truncated) == (3, 0, 2)
  assert max(truncated.lengths('inputs').max(), truncated.lengths('targets').max()) == 20
  assert all(truncated[i]['targets'][-1] == tokenizer_lib.EOS_ID for i in range(3))
  with pytest.raises(ValueError, match='overlong'):
    pipeline.tokenize_pairs(pairs, small_tokenizer, max_length=20, overlong='wrap')


def _write(path, data: bytes):
  if str(path).endswith('.gz'):
    data = gzip.compress(data)
  path.write_bytes(data)
  return str(path)


@pytest.mark.parametrize(
  'content,message',
  [
    (
      b'id\ten\tfr\n1\thello\tbonjour\n2\tmissing column\n',
      r'bad.tsv:3: expected 3 tab-separated columns, found 2',
    ),
    (b'id\ten\tfr\n1\thello\tbonjour\n2\t \tvide\n', r"bad.tsv:3: empty 'en' side"),
    (b'id\ten\tfr\n1\thello\tbonjour\n2\tcaf\xe9\tcafe\n', r'bad.tsv:3: invalid UTF-8'),
    (b'id\tenglish\tfr\n1\thello\tbonjour\n', r"bad.tsv:1: header .* has no column 'en'"),
  ],
)
def test_malformed_tsv_names_file_and_line(tmp_path, content, message):
  path = _write(tmp_path / 'bad.tsv', content)
  with pytest.raises(corpus.CorpusError, match=message):
    corpus.read_tsv(path, 'en', 'fr')


def test_malformed_lines_can_be_skipped_and_are_counted(tmp_path):
  path = _write(
    tmp_path / 'bad.tsv.gz', b'id\ten\tfr\n1\thello\tbonjour\n2\tonly two\n3\t\tx\n4\tcat\tchat\n'
  )
  pairs, report = corpus.read_tsv(path, 'en', 'fr', skip_malformed=True)
  assert pairs == [('hello', 'bonjour'), ('cat', 'chat')]
  assert (
    report.skipped == 2
    and 'bad.tsv.gz:3' in report.reasons[0]
    and '2 malformed lines skipped' in str(report)
  )


def test_parallel_files(tmp_path):
  _write(tmp_path / 'train.en', b'hello\ncat\n')
  _write(tmp_path / 'train.fr', b'bonjour\nchat\n')
  pairs, _ = datasets.read_split(
    'local', 'train', 'en', 'fr', local_files={'train': str(tmp_path / 'train')}
  )
  assert pairs == [('hello', 'bonjour'), ('cat', 'chat')]
  _write(tmp_path / 'short.en', b'hello\ncat\ndog\n')
  _write(tmp_path / 'short.fr', b'bonjour\nchat\n')
  with pytest.raises(corpus.CorpusError, match=r'short.fr: has fewer lines than .*short.en'):
    corpus.read_parallel_files(str(tmp_path / 'short.en'), str(tmp_path / 'short.fr'))
  _write(tmp_path / 'empty.en', b'hello\n\n')
  _write(tmp_path / 'empty.fr', b'bonjour\nvide\n')
  with pytest.raises(corpus.CorpusError, match=r'empty.en:2: empty line'):
    corpus.read_parallel_files(str(tmp_path / 'empty.en'), str(tmp_path / 'empty.fr'))
  with pytest.raises(ValueError, match='local_files.validation'):
    datasets.read_split('local', 'validation', 'en', 'fr', local_files={'train': 'x'})


def test_missing_file_is_named(tmp_path):
  with pytest.raises(corpus.CorpusError, match='nope.tsv: file not found'):
    corpus.read_tsv(str(tmp_path / 'nope.tsv'), 'en', 'fr')


def test_remote_tfds_path_on_mock_data():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    pairs, report = datasets.read_split('wmt14_translate/de-en', 'train', 'en', 'de')
  assert len(pairs) == 12 and all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)
  assert 'wmt14_translate/de-en[train]' in report


def test_eval_batches_are_full_and_in_order():
  pairs, inputs, _ = _pairs(n=10)
  batches = list(pipeline.eval_batches(pairs, batch_size=4, max_length=20))
  assert [b['inputs'].shape for b in batches] == [(4, 20)] * 3
  assert batches[-1]['inputs_segment_ids'][2:].sum() == 0  # the filler rows are all padding
  np.testing.assert_array_equal(batches[0]['inputs'][0][: len(inputs[0])], inputs[0])


@pytest.mark.parametrize('examples', [64, 65, 66, 129])
def test_every_host_runs_the_same_number_of_eval_batches(examples):
  """Collective eval steps deadlock if one host has a batch more than another."""
  pairs, _, _ = _pairs(n=examples)
  per_host = [
    list(pipeline.eval_batches(pairs, batch_size=32, max_length=20, shard_index=i, shard_count=2))
    for i in range(2)
  ]
  assert len(per_host[0]) == len(per_host[1])
  weights = sum(
    int((b['targets_segment_ids'] > 0).any(-1).sum()) for host in per_host for b in host
  )
  assert weights == examples  # every example once, the rest filler
