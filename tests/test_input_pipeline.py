import gzip
import os

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import configs, text
from transformer import Transformer, TransformerConfig
from transformer.input_pipeline import corpus, pipeline, sources, tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def embedded_train(tfds_dir):
  pairs, _ = sources.read_split('bible_en_fr', 'train', 'en', 'fr', data_dir=tfds_dir)
  return pairs


@pytest.fixture(scope='session')
def small_tokenizer(tmp_path_factory, embedded_train):
  path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.model')
  sentences = [text for pair in embedded_train[:4000] for text in pair]
  return tokenizer_lib.train_tokenizer(path, sentences, vocab_size=600)


def test_embedded_dataset_has_the_documented_sizes_offline(tfds_dir, embedded_train):
  assert len(embedded_train) == 29_404
  for split, expected in (('validation', 948), ('test', 750)):
    pairs, report = sources.read_split('bible_en_fr', split, 'en', 'fr', data_dir=tfds_dir)
    assert len(pairs) == expected, report
  assert all(src and tgt for src, tgt in embedded_train)
  # Direction comes from the config: fr -> en swaps the sides.
  swapped, _ = sources.read_split('bible_en_fr', 'test', 'fr', 'en', data_dir=tfds_dir)
  english, _ = sources.read_split('bible_en_fr', 'test', 'en', 'fr', data_dir=tfds_dir)
  assert swapped[0] == english[0][::-1]


def test_direct_parsing_of_tfds_records_equals_tfds_decoding(tfds_dir):
  source = sources.TfdsPairs('bible_en_fr', 'validation', 'fr', 'en', tfds_dir)
  indices = [0, 5, 947, 3, 3]
  expected = [source._pair(source.records[i]) for i in indices]  # TFDS's own decoding
  assert source.__getitems__(indices) == expected and expected[0][0] != expected[0][1]


def test_unknown_language_is_a_clear_error(tfds_dir):
  with pytest.raises(ValueError, match="no language 'de'"):
    sources.read_split('bible_en_fr', 'test', 'en', 'de', data_dir=tfds_dir)


def test_tokenizer_round_trip_and_special_ids(small_tokenizer, embedded_train):
  tok = small_tokenizer
  for src, tgt in embedded_train[5000:5200]:  # text the tokenizer was not trained on
    for sentence in (src, tgt):
      assert tok.decode(tok.encode(sentence)) == tok.normalize(sentence)
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


@pytest.fixture(scope='module')
def text_tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('text_tok') / 'tokenizer.model')
  sentences = [s for pair in text.pairs(2000, seed=99) for s in pair]
  return tokenizer_lib.train_tokenizer(path, sentences, vocab_size=60)


def _batches(source, tokenizer, **kwargs):
  values = dict(batch_size=4, max_length=64, seed=3, chunk_pairs=16)
  values.update(kwargs)
  return pipeline.TrainBatches(source, tokenizer.loader, **values)


def _unpack(rows):
  """Per-example (inputs, targets) token tuples recovered from rows via segment ids."""
  examples = []
  for row in range(rows['inputs'].shape[0]):
    segments = rows['inputs_segment_ids'][row]
    for segment in range(1, segments.max() + 1):
      parts = []
      for name in ('inputs', 'targets'):
        mask = rows[f'{name}_segment_ids'][row] == segment
        positions = rows[f'{name}_positions'][row][mask]
        np.testing.assert_array_equal(positions, np.arange(mask.sum()))  # restart at 0, +1 each
        assert mask.sum() > 0
        parts.append(tuple(rows[name][row][mask].tolist()))
      examples.append(tuple(parts))
    # Padding: the pad id (0) exactly where the segment id is 0.
    for name in ('inputs', 'targets'):
      np.testing.assert_array_equal(rows[name][row] == 0, rows[f'{name}_segment_ids'][row] == 0)
  return examples


def _encoded(tokenizer, pairs):
  eos = tokenizer_lib.EOS_ID
  return [
    (tuple(tokenizer.encode(s) + [eos]), tuple(tokenizer.encode(t) + [eos])) for s, t in pairs
  ]


def _epoch(batches):
  """The rows of the first epoch: the chunks that cover the shard once."""
  chunks = batches.shard_length // batches.chunk_pairs
  assert chunks * batches.chunk_pairs == batches.shard_length, 'use a shard of whole chunks'
  rows = [batches.chunks[c]['rows'] for c in range(chunks)]
  return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def test_packing_loses_and_duplicates_nothing(text_tokenizer):
  pairs = text.pairs(64)
  batches = _batches(text.ListSource(pairs), text_tokenizer)
  rows = _epoch(batches)
  assert rows['inputs'].shape[1] == 64
  assert sorted(_unpack(rows)) == sorted(_encoded(text_tokenizer, pairs))
  assert len(rows['inputs']) <= 64 / 2  # several examples per row, really packed


def test_packed_pipeline_row_gives_the_same_logits_as_examples_alone(text_tokenizer):
  batch = next(
    _batches(text.ListSource(text.pairs(16, seed=1)), text_tokenizer, batch_size=2, max_length=40)
  )
  from transformer import shift_right

  config = configs.tiny_config(vocab_size=text_tokenizer.vocab_size)
  model = Transformer(config, rngs=nnx.Rngs(0))
  dec_in = shift_right(
    jnp.asarray(batch['targets']), config.bos_id, jnp.asarray(batch['targets_segment_ids'])
  )
  call = nnx.jit(lambda model, src, dec_in, **packing: model(src, dec_in, **packing))
  packed = call(
    model,
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
    # Each example alone, right-padded to the row's length (padding changes no real position).
    src = np.zeros((1, 40), np.int32)
    source = batch['inputs'][row][batch['inputs_segment_ids'][row] == segment]
    src[0, : len(source)] = source
    tgt_mask = segments == segment
    tgt = batch['targets'][row][tgt_mask]
    alone_input = np.zeros((1, 40), np.int32)
    alone_input[0, : len(tgt)] = np.concatenate([[config.bos_id], tgt[:-1]])
    alone = call(model, src, alone_input)[0, : len(tgt)]
    np.testing.assert_allclose(np.asarray(packed[row])[tgt_mask], alone, atol=1e-5)


@pytest.mark.parametrize('hosts', [2, 4])
def test_process_shards_are_disjoint_and_cover_the_split(text_tokenizer, hosts):
  pairs = text.pairs(16 * 4 * hosts)
  seen = []
  for index in range(hosts):
    batches = _batches(text.ListSource(pairs), text_tokenizer, shard_index=index, shard_count=hosts)
    seen.append(_unpack(_epoch(batches)))
    assert len(set(seen[-1])) == len(seen[-1]) == len(pairs) // hosts
  assert sorted(sum(seen, [])) == sorted(_encoded(text_tokenizer, pairs))


def test_a_process_reads_and_tokenizes_only_its_own_records(text_tokenizer):
  class Recording(text.ListSource):
    read: list[int] = []

    def __getitems__(self, indices):
      Recording.read += list(indices)
      return super().__getitems__(indices)

  batches = _batches(Recording(text.pairs(128)), text_tokenizer, shard_index=1, shard_count=4)
  for _ in range(20):
    next(batches)
  assert Recording.read and all(i % 4 == 1 for i in Recording.read)


def test_shuffle_is_deterministic_for_a_seed_and_differs_across_epochs(text_tokenizer):
  source = text.ListSource(text.pairs(32))
  take = lambda seed: [
    next(b)['inputs'].tolist()
    for b in [_batches(source, text_tokenizer, seed=seed, pack=False)]
    for _ in range(16)
  ]
  assert take(5) == take(5) and take(5) != take(6)
  first, second = take(5)[:8], take(5)[8:]  # 32 examples, 4 per batch: 8 batches an epoch
  assert first != second and sorted(sum(first, [])) == sorted(sum(second, []))


def test_workers_give_the_same_batches_and_resume_exactly(text_tokenizer):
  source = text.ListSource(text.pairs(200))
  plain = _batches(source, text_tokenizer)
  expected = [next(plain) for _ in range(30)]
  with_workers = _batches(source, text_tokenizer, workers=2)
  got = [next(with_workers) for _ in range(12)]
  state = with_workers.get_state()
  resumed = _batches(source, text_tokenizer, workers=2)
  resumed.set_state(state)
  got += [next(resumed) for _ in range(18)]
  for a, b in zip(got, expected):
    for key in pipeline.FIELDS:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_restore_with_another_process_count_resumes_at_the_same_fraction(text_tokenizer):
  source = text.ListSource(text.pairs(256))
  states = {}
  for index in range(2):
    batches = _batches(source, text_tokenizer, shard_index=index, shard_count=2)
    for _ in range(index + 5):  # the processes stand at slightly different places
      next(batches)
    states[index] = batches.get_state()
  one = _batches(source, text_tokenizer)
  note = one.restore({'process_count': 2, 'states': states})
  assert 'written by 2 process(es), this run has 1' in note
  least = min(s['chunk'] * s['chunk_pairs'] / s['shard_length'] for s in states.values())
  assert one.get_state()['chunk'] == int(least * 256) // 16
  next(one)  # and it reads on from there


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
  pairs, _ = sources.read_split(
    'local', 'train', 'en', 'fr', local_files={'train': str(tmp_path / 'train')}
  )
  assert pairs == [('hello', 'bonjour'), ('cat', 'chat')]
  _write(tmp_path / 'short.en', b'hello\ncat\ndog\n')
  _write(tmp_path / 'short.fr', b'bonjour\nchat\n')
  with pytest.raises(corpus.CorpusError, match=r'short.fr: has fewer lines than .*short.en'):
    corpus.read_parallel_files(str(tmp_path / 'short.en'), str(tmp_path / 'short.fr'))
  _write(tmp_path / 'empty.en', b'hello\n\ncat\n')
  _write(tmp_path / 'empty.fr', b'bonjour\nvide\nchat\n')
  with pytest.raises(corpus.CorpusError, match=r'empty.en:2: empty line'):
    corpus.read_parallel_files(str(tmp_path / 'empty.en'), str(tmp_path / 'empty.fr'))
  with pytest.raises(ValueError, match='local_files.validation'):
    sources.read_split('local', 'validation', 'en', 'fr', local_files={'train': 'x'})


def test_text_files_as_people_make_them(tmp_path):
  """A byte-order mark, Windows line ends and blank lines at the end are read, not refused."""
  bom = b'\xef\xbb\xbf'
  tsv = _write(
    tmp_path / 'win.tsv', bom + b'id\ten\tfr\r\n1\thello\tbonjour\r\n2\tcat\tchat\r\n\r\n\n'
  )
  assert corpus.read_tsv(tsv, 'en', 'fr')[0] == [('hello', 'bonjour'), ('cat', 'chat')]
  _write(tmp_path / 'p.en', bom + b'hello\r\ncat\r\n\r\n')
  _write(tmp_path / 'p.fr', b'bonjour\nchat\n')
  assert corpus.read_parallel_files(str(tmp_path / 'p.en'), str(tmp_path / 'p.fr'))[0] == [
    ('hello', 'bonjour'),
    ('cat', 'chat'),
  ]
  # A blank line before the end is still a malformed line.
  middle = _write(tmp_path / 'mid.tsv', b'id\ten\tfr\n1\thello\tbonjour\n\n2\tcat\tchat\n')
  with pytest.raises(corpus.CorpusError, match='mid.tsv:3'):
    corpus.read_tsv(middle, 'en', 'fr')


def test_missing_file_is_named(tmp_path):
  with pytest.raises(corpus.CorpusError, match='nope.tsv: file not found'):
    corpus.read_tsv(str(tmp_path / 'nope.tsv'), 'en', 'fr')


def test_remote_tfds_path_on_mock_data():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    pairs, report = sources.read_split('wmt14_translate/de-en', 'train', 'en', 'de')
    swapped, _ = sources.read_split('wmt14_translate/de-en', 'train', 'de', 'en')
  assert len(pairs) == 12 and all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)
  assert 'wmt14_translate/de-en[train]' in report
  # source_lang picks the source side: the same examples, sides exchanged.
  assert swapped == [(t, s) for s, t in pairs] and any(s != t for s, t in pairs)


def _pairs(n=60, seed=0):
  """Tokenized pairs of random ids (each ending in EOS), and the two lists they came from."""
  rng = np.random.default_rng(seed)
  make = lambda: [
    rng.integers(4, 50, size=rng.integers(1, 15)).tolist() + [tokenizer_lib.EOS_ID]
    for _ in range(n)
  ]
  inputs, targets = make(), make()
  return pipeline.TokenizedPairs.from_lists(inputs, targets), inputs, targets


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


def test_local_files_are_prepared_once_and_reused(tmp_path):
  path = _write(tmp_path / 'train.tsv', b'id\ten\tfr\n1\thello\tbonjour\n2\tcat\tchat\n')
  cache = str(tmp_path / 'cache')
  first = sources.prepare_local(path, 'en', 'fr', cache)
  assert first[1] == ('cat', 'chat') and len(first) == 2
  record_file = os.path.join(first.folder, 'pairs.array_record')
  written = os.path.getmtime(record_file)
  again = sources.prepare_local(path, 'en', 'fr', cache)
  assert again.folder == first.folder and os.path.getmtime(record_file) == written  # reused
  assert sources.prepare_local(path, 'fr', 'en', cache)[1] == ('chat', 'cat')  # its own entry
  _write(tmp_path / 'train.tsv', b'id\ten\tfr\n1\thello\tbonjour\n2\tdog\tchien\n')
  assert sources.prepare_local(path, 'en', 'fr', cache)[1] == ('dog', 'chien')  # content changed


def test_a_damaged_local_file_fails_with_file_and_line_and_leaves_no_cache(tmp_path):
  path = _write(tmp_path / 'bad.tsv', b'id\ten\tfr\n' + b'1\tok\tok\n' * 1000 + b'2\tbroken\n')
  cache = tmp_path / 'cache'
  with pytest.raises(corpus.CorpusError, match=r'bad.tsv:1002: expected 3 tab-separated columns'):
    sources.prepare_local(path, 'en', 'fr', str(cache))
  assert not cache.exists() or list(cache.iterdir()) == []
  # With skip_malformed the same file prepares, and the skipped line is on record.
  prepared = sources.prepare_local(path, 'en', 'fr', str(cache), skip_malformed=True)
  assert len(prepared) == 1000 and prepared.report['skipped'] == 1
