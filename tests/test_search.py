import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import Transformer
from transformer.decoding import search
from transformer.decoding.batch import Batch
from transformer.decoding.options import Sampling
from transformer.model.encoder_decoder import shift_right
from transformer.training import evaluation

PAD, BOS, EOS, A, B = 0, 1, 2, 3, 4


def markov_step_fn(table):
  """A hand-built 'model': the next-token distribution depends only on the previous token.

  The cache counts the steps each row has taken, so wrong beam reordering would show."""
  log_table = jnp.log(jnp.asarray(table, jnp.float32) + 1e-12)

  def step_fn(tokens, position, cache):
    del position
    return log_table[tokens[:, 0]], cache + 1

  return step_fn


# From BOS: A 0.6, B 0.4. After A: EOS 0.4, A 0.3, B 0.3. After B: EOS 0.95, A 0.05.
# Greedy takes A then EOS: P = 0.24. The better sequence is B EOS: P = 0.38.
TABLE = np.zeros((5, 5))
TABLE[BOS] = [0, 0, 0, 0.6, 0.4]
TABLE[A] = [0, 0, 0.4, 0.3, 0.3]
TABLE[B] = [0, 0, 0.95, 0.05, 0]
TABLE[EOS] = [0, 0, 1.0, 0, 0]
TABLE[PAD] = [0, 0, 1.0, 0, 0]
RULES_6 = search.Rules(buffer_length=6, bos_id=BOS, eos_id=EOS)


def test_beam_search_finds_the_better_sequence_greedy_misses():
  step_fn = markov_step_fn(TABLE)
  greedy = search.greedy_search(
    step_fn, jnp.zeros((1,)), 1, search.Rules(buffer_length=6, bos_id=BOS, eos_id=EOS)
  )
  np.testing.assert_array_equal(greedy[0], [A, EOS, PAD, PAD, PAD, PAD])
  seqs, scores = search.beam_search(
    step_fn, jnp.zeros((2,)), 1, RULES_6, beam_size=2, length_penalty=0.0
  )
  np.testing.assert_array_equal(seqs[0, 0], [B, EOS, PAD, PAD, PAD, PAD])
  np.testing.assert_allclose(scores[0, 0], math.log(0.38), rtol=1e-5)
  np.testing.assert_array_equal(seqs[0, 1], [A, EOS, PAD, PAD, PAD, PAD])
  np.testing.assert_allclose(scores[0, 1], math.log(0.24), rtol=1e-5)


def test_length_penalty_scores_and_finished_hypotheses_stop_growing():
  step_fn = markov_step_fn(TABLE)
  alpha = 0.6
  seqs, scores = search.beam_search(
    step_fn,
    jnp.zeros((3,)),
    1,
    search.Rules(buffer_length=8, bos_id=BOS, eos_id=EOS),
    beam_size=3,
    length_penalty=alpha,
  )
  for beam in range(3):
    tokens = np.asarray(seqs[0, beam]).tolist()
    assert EOS in tokens
    end = tokens.index(EOS)
    assert all(t == PAD for t in tokens[end + 1 :])  # nothing after EOS
    log_p, previous = 0.0, BOS
    for t in tokens[: end + 1]:
      log_p += math.log(TABLE[previous][t])
      previous = t
    lp = ((5 + end + 1) / 6) ** alpha
    np.testing.assert_allclose(scores[0, beam], log_p / lp, rtol=1e-5)
  assert np.all(np.diff(np.asarray(scores[0])) <= 1e-6)  # best first


# From BOS: A 0.6, EOS 0.4. After A: A 0.7, EOS 0.3. With beam 2, [EOS] ends at step 0 and
# [A, EOS] at step 1; every longer A…A EOS scores better under log P / length^2.
STOP_TABLE = np.zeros((5, 5))
STOP_TABLE[BOS] = [0, 0, 0.4, 0.6, 0]
STOP_TABLE[A] = [0, 0, 0.3, 0.7, 0]
STOP_TABLE[EOS] = STOP_TABLE[PAD] = STOP_TABLE[B] = [0, 0, 1.0, 0, 0]


def test_ctranslate2_normalization_stops_once_beam_size_hypotheses_have_ended():
  """CTranslate2 (patience 1) stops a sentence at k ended hypotheses and returns the best of
  them; transformers' rule goes on while a live beam could beat the worst ended one."""
  results = {}
  for normalization in ('ctranslate2', 'hf'):
    seqs, scores = search.beam_search(
      markov_step_fn(STOP_TABLE),
      jnp.zeros((2,)),
      1,
      RULES_6,
      beam_size=2,
      length_penalty=2.0,
      length_normalization=normalization,
    )
    results[normalization] = np.asarray(seqs[0, 0]).tolist(), float(scores[0, 0])
  assert results['ctranslate2'][0] == [A, EOS, PAD, PAD, PAD, PAD]
  np.testing.assert_allclose(results['ctranslate2'][1], math.log(0.6 * 0.3) / 2**2, rtol=1e-5)
  assert results['hf'][0] == [A] * 6  # longer is better under length^2, up to the limit


def random_step_fn(vocab=12, seed=0):
  """Logits depend on the previous token and the position (a fixed random table)."""
  table = jax.random.normal(jax.random.key(seed), (64, vocab, vocab)) * 2.0

  def step_fn(tokens, position, cache):
    return table[position, tokens[:, 0]], cache

  return step_fn


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_beam_size_one_equals_greedy(seed):
  step_fn = random_step_fn(seed=seed)
  batch = 3
  greedy = search.greedy_search(
    step_fn, jnp.zeros((batch,)), batch, search.Rules(buffer_length=10, bos_id=BOS, eos_id=EOS)
  )
  seqs, _ = search.beam_search(
    step_fn,
    jnp.zeros((batch,)),
    batch,
    search.Rules(buffer_length=10, bos_id=BOS, eos_id=EOS),
    beam_size=1,
    length_penalty=0.0,
  )
  np.testing.assert_array_equal(seqs[:, 0], greedy)


@pytest.fixture(params=['float32', 'bfloat16'])
def model(tiny_config, request):
  """The tiny model in float32 and in bfloat16 compute (whose CPU projections take their own
  path, `transformer.model.precision`, in the cached steps as in the full pass)."""
  m = Transformer(tiny_config.replace(dtype=request.param), rngs=nnx.Rngs(3))
  m.eval()
  return m


SRC = np.array([[5, 6, 7, 8, 2, 0], [9, 10, 2, 0, 0, 0], [11, 12, 13, 14, 15, 2]], np.int32)


def test_cached_decoding_equals_recomputing_the_prefix(model):
  cached = search.generate(model, SRC, beam_size=1, max_new_tokens=12)
  recomputed = search.generate_recompute(model, SRC, max_new_tokens=12)
  np.testing.assert_array_equal(cached, recomputed)


def test_transformer_beam_search_outputs_are_well_formed(model):
  tokens = np.asarray(search.generate(model, SRC, beam_size=3, max_new_tokens=12))
  assert tokens.shape == (3, 12)
  for row in tokens.tolist():
    if model.config.eos_id in row:
      end = row.index(model.config.eos_id)
      assert all(t == model.config.pad_id for t in row[end + 1 :])
  # Beam 1 through generate is the greedy path.
  np.testing.assert_array_equal(
    search.generate(model, SRC, beam_size=1, max_new_tokens=12),
    search.generate_recompute(model, SRC, max_new_tokens=12),
  )


@pytest.mark.parametrize('beam_size', [1, 3])
def test_each_sentence_generates_at_most_its_own_source_length_plus_extra(model, beam_size):
  tokens = np.asarray(search.generate(model, SRC, beam_size=beam_size, extra_length=3))
  source_lengths = (SRC != model.config.pad_id).sum(-1)  # 5, 2, 6
  assert tokens.shape[1] == 16  # the longest limit (9), rounded up to a multiple of 16
  for row, limit in enumerate(source_lengths + 3):
    assert (tokens[row, limit:] == model.config.pad_id).all(), (row, tokens[row])
  # The default extra length is 50, capped at the model's max_positions (64 here).
  assert search.generate(model, SRC, beam_size=1).shape[1] == 64
  with pytest.raises(ValueError, match='beam_size'):
    search.generate(model, SRC, beam_size=0)


@pytest.mark.parametrize('beam_size', [1, 3])
def test_a_translation_does_not_depend_on_the_rest_of_its_batch(model, beam_size):
  """Alone or next to a much longer source, a sentence gets the same tokens."""
  long_source = np.arange(3, 3 + 40, dtype=np.int32) % (model.config.vocab_size - 3) + 3
  batch = np.zeros((2, 48), np.int32)
  batch[0, :6] = SRC[2]
  batch[1, :40] = long_source
  together = np.asarray(search.generate(model, batch, beam_size=beam_size, extra_length=4))
  alone = np.asarray(search.generate(model, SRC[2:3], beam_size=beam_size, extra_length=4))
  width = min(together.shape[1], alone.shape[1])
  np.testing.assert_array_equal(together[0, :width], alone[0, :width])
  assert (together[0, width:] == model.config.pad_id).all()


def test_bleu_is_the_papers_formula_on_detokenised_text():
  """BLEU = BP · exp(mean log p_n), n = 1..4, with clipped n-gram precisions, by hand:
  'the cat sat on the mat' against 'the cat sat on a mat': p = 5/6, 3/5, 2/4, 1/3, BP = 1."""
  bleu, signature = evaluation.corpus_bleu(['the cat sat on the mat'], ['the cat sat on a mat'])
  assert bleu == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-6)
  assert 'tok:13a' in signature
  # Detokenised text is tokenised by 13a (punctuation split off) before counting.
  refs = ['Au commencement, Dieu créa les cieux et la terre.', 'La terre était informe et vide.']
  assert evaluation.corpus_bleu(refs, refs)[0] == pytest.approx(100.0)
  worse, _ = evaluation.corpus_bleu(
    ['Au commencement Dieu fit le ciel.', 'La terre était vide.'], refs
  )
  assert 0 < worse < 100
  with pytest.raises(ValueError, match='2 references'):
    evaluation.corpus_bleu(['x'], refs)


def test_argmax_last_matches_argmax_with_ties_and_nan():
  logits = jnp.array(
    [
      [0.0, 3.0, 3.0, 1.0],
      [5.0, -1.0, 5.0, 5.0],
      [-2.0, -3.0, -1.0, -1.5],
      [jnp.nan, jnp.nan, jnp.nan, jnp.nan],
    ]
  )
  out = np.asarray(search.argmax_last(logits))
  np.testing.assert_array_equal(out[:3], np.asarray(logits[:3].argmax(-1)))  # first maximum on ties
  assert 0 <= out[3] < 4  # an all-NaN row still gives a token inside the vocabulary
  random = jax.random.normal(jax.random.key(0), (32, 8000))
  np.testing.assert_array_equal(search.argmax_last(random), random.argmax(-1))


def _reference_beam_search(model, src_row, beam_size, max_length, alpha):
  """Beam search written plainly: every hypothesis re-runs the whole decoder (no cache, no
  reordering), with the same rules as `search.beam_search` (2k candidates, an EOS extension
  finishes only within the top k, GNMT length penalty, alive beams returned if none finished)."""
  config = model.config
  src = jnp.asarray(src_row)[None]
  # One compiled decoder pass over a fixed-length input: the causal mask makes what follows
  # the hypothesis irrelevant to the logits at its last position.
  graphdef, state = nnx.split(model)
  last_logits = jax.jit(
    lambda state, decoder_input, position: nnx.merge(graphdef, state).decode(
      decoder_input, nnx.merge(graphdef, state).encode(src), src
    )[0, position]
  )
  alive, finished = [((), 0.0)], []
  for i in range(max_length):
    candidates = []
    for beam, (tokens, log_p) in enumerate(alive):
      decoder_input = np.full((1, max_length), config.pad_id, np.int32)
      decoder_input[0, : len(tokens) + 1] = (config.bos_id,) + tokens
      logits = np.asarray(last_logits(state, decoder_input, len(tokens)), np.float64)
      logits[config.pad_id] = -np.inf
      log_probs = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
      for token in range(config.vocab_size):
        candidates.append(
          (log_p + log_probs[token], beam * config.vocab_size + token, tokens + (token,))
        )
    candidates.sort(key=lambda c: (-c[0], c[1]))
    top = candidates[: 2 * beam_size]
    penalty = ((5 + i + 1) / 6) ** alpha
    finished += [
      (tokens, score / penalty)
      for rank, (score, _, tokens) in enumerate(top)
      if tokens[-1] == config.eos_id and rank < beam_size
    ]
    finished = sorted(finished, key=lambda f: -f[1])[:beam_size]
    alive = [(tokens, score) for score, _, tokens in top if tokens[-1] != config.eos_id][:beam_size]
  return finished[0][0] if finished else alive[0][0]


def test_beam_search_on_the_kv_cache_equals_a_plain_recomputing_beam_search(tiny_config):
  """Batch 3 × beam 3 on the real caches: the reordering of the caches between beams and
  sentences must give what re-running the decoder for every hypothesis gives."""
  model = Transformer(tiny_config.replace(vocab_size=24), rngs=nnx.Rngs(5))
  model.eval()
  # Larger weights make every token of the prefix matter to the next distribution, so that a
  # beam reading another beam's cache would choose differently.
  params = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: 3.0 * p, params))
  src = np.array([[5, 6, 7, 8, 2, 0], [9, 10, 2, 0, 0, 0], [11, 12, 13, 14, 15, 2]], np.int32)
  tokens = np.asarray(
    search.generate(model, src, beam_size=3, length_penalty=0.6, max_new_tokens=10)
  )
  for row in range(3):
    expected = list(_reference_beam_search(model, src[row], 3, 10, 0.6))
    assert tokens[row, : len(expected)].tolist() == expected, row
    assert (tokens[row, len(expected) :] == tiny_config.pad_id).all()


@pytest.mark.parametrize('beam_size', [1, 3])
def test_n_best_hypotheses_come_with_their_scores_and_log_probabilities(tiny_config, beam_size):
  """Best first; log P is the teacher-forced log-probability of the tokens (EOS included) and
  the score is log P over the length penalty; the first equals `generate`'s output."""
  model = Transformer(tiny_config, rngs=nnx.Rngs(2))
  model.eval()
  src = np.array([[5, 6, 7, 8, 2, 0], [9, 10, 2, 0, 0, 0]], np.int32)
  tokens, scores, log_probs = map(
    np.asarray,
    search.generate_n_best(
      model, src, n_best=beam_size, beam_size=beam_size, length_penalty=0.6, max_new_tokens=7
    ),
  )
  assert tokens.shape == (2, beam_size, 7)
  np.testing.assert_array_equal(
    tokens[:, 0],
    search.generate(model, src, beam_size=beam_size, length_penalty=0.6, max_new_tokens=7),
  )
  assert np.all(np.diff(scores, axis=1) <= 1e-6)
  for n in range(beam_size):
    forced = np.asarray(search.log_probability(model, src, tokens[:, n]))
    np.testing.assert_allclose(log_probs[:, n], forced, atol=1e-4)
    lengths = (tokens[:, n] != tiny_config.pad_id).sum(-1)
    np.testing.assert_allclose(scores[:, n], forced / ((5 + lengths) / 6) ** 0.6, atol=1e-4)
  with pytest.raises(
    ValueError, match=f'n_best must be between 1 and the beam size {beam_size}, got {beam_size + 1}'
  ):
    search.generate_n_best(model, src, n_best=beam_size + 1, beam_size=beam_size)


# Forced target prefixes.

PREFIX_SRC = np.array([[5, 6, 7, 8, 2, 0], [9, 10, 2, 0, 0, 0], [11, 12, 13, 2, 0, 0]], np.int32)
# Row 0 forces three tokens, row 1 one, row 2 none (a row of pads).
PREFIX = np.array([[20, 21, 22, 0], [23, 0, 0, 0], [0, 0, 0, 0]], np.int32)


def _greedy_given_prefix_by_teacher_forcing(model, src, tokens, prefix):
  """Each token after a row's prefix is the argmax of the teacher-forced logits of the tokens
  before it (pad excluded), up to EOS: the continuation a correct greedy search makes."""
  logits = np.array(model(jnp.asarray(src), shift_right(jnp.asarray(tokens), model.config.bos_id)))
  logits[..., model.config.pad_id] = -np.inf
  for row in range(len(src)):
    start = int((prefix[row] != 0).sum())
    for i in range(start, tokens.shape[1]):
      assert tokens[row, i] == logits[row, i].argmax(), (row, i)
      if tokens[row, i] == model.config.eos_id:
        break


@pytest.mark.parametrize('beam_size', [1, 3])
def test_every_hypothesis_starts_with_its_prefix(tiny_config, beam_size):
  model = Transformer(tiny_config, rngs=nnx.Rngs(5))
  model.eval()
  tokens, scores, log_probs = map(
    np.asarray,
    search.generate_n_best(
      model,
      Batch.of(PREFIX_SRC, prefix=PREFIX),
      n_best=beam_size,
      beam_size=beam_size,
      max_new_tokens=8,
    ),
  )
  for row, width in enumerate([3, 1, 0]):
    for n in range(beam_size):
      np.testing.assert_array_equal(tokens[row, n, :width], PREFIX[row, :width])
  # The scores include the prefix: log P is the teacher-forced log-probability of everything.
  for n in range(beam_size):
    forced = np.asarray(search.log_probability(model, PREFIX_SRC, tokens[:, n]))
    np.testing.assert_allclose(log_probs[:, n], forced, atol=1e-4)
  if beam_size == 1:
    _greedy_given_prefix_by_teacher_forcing(model, PREFIX_SRC, tokens[:, 0], PREFIX)


@pytest.mark.parametrize('beam_size', [1, 3])
def test_an_empty_prefix_equals_no_prefix(model, beam_size):
  empty = np.zeros((len(PREFIX_SRC), 16), np.int32)
  without = search.generate(model, PREFIX_SRC, beam_size=beam_size, extra_length=5)
  with_empty = np.asarray(
    search.generate(model, Batch.of(PREFIX_SRC, prefix=empty), beam_size=beam_size, extra_length=5)
  )
  length = without.shape[1]  # the output may be longer: room for a 16-token prefix
  np.testing.assert_array_equal(with_empty[:, :length], without)
  assert np.all(with_empty[:, length:] == model.config.pad_id)


def test_a_sampled_continuation_starts_with_its_prefix_and_an_empty_one_changes_nothing(model):
  sampling = Sampling(temperature=1.5, seed=3)
  sampled = np.asarray(
    search.generate(
      model, Batch.of(PREFIX_SRC, prefix=PREFIX), beam_size=1, max_new_tokens=8, sampling=sampling
    )
  )
  np.testing.assert_array_equal(sampled[0, :3], PREFIX[0, :3])
  np.testing.assert_array_equal(sampled[1, :1], PREFIX[1, :1])
  plain = search.generate(model, PREFIX_SRC, beam_size=1, max_new_tokens=8, sampling=sampling)
  np.testing.assert_array_equal(sampled[2], np.asarray(plain)[2])


def test_a_prefix_longer_than_the_limit_raises_the_limit(model):
  """A sentence may generate its prefix and at least one more token."""
  long_prefix = np.tile(np.arange(20, 26, dtype=np.int32), (len(PREFIX_SRC), 1))
  tokens = np.asarray(
    search.generate(model, Batch.of(PREFIX_SRC, prefix=long_prefix), beam_size=1, max_new_tokens=3)
  )
  assert tokens.shape[1] == 7
  np.testing.assert_array_equal(tokens[:, :6], long_prefix)
  assert np.all(tokens[:, 6] != model.config.pad_id)
