"""Ensembles: one member is the model, two identical members are the model, two different ones
decode by their averaged log-probabilities; members with other vocabularies are refused."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import configs
from transformer import Transformer
from transformer.decoding import search
from transformer.decoding.ensemble import Ensemble, check_vocabularies
from transformer.model.encoder_decoder import shift_right

SRC = np.array([[5, 6, 7, 8, 2, 0], [9, 10, 2, 0, 0, 0], [11, 12, 13, 14, 15, 2]], np.int32)


def _model(seed: int, **overrides) -> Transformer:
  """A one-layer model: an ensemble traces every member's step, so small members keep the
  compilations short."""
  sizes = dict(num_encoder_layers=1, num_decoder_layers=1, d_model=16, num_heads=2, d_ff=32)
  m = Transformer(configs.tiny_config(**{**sizes, **overrides}), rngs=nnx.Rngs(seed))
  m.eval()
  return m


@pytest.fixture(scope='module')
def models():
  return _model(1), _model(2)


@pytest.mark.parametrize('beam_size', [1, 3])
def test_an_ensemble_of_one_is_the_model(models, beam_size):
  single = search.generate(models[0], SRC, beam_size=beam_size, max_new_tokens=9)
  one = search.generate(Ensemble([models[0]]), SRC, beam_size=beam_size, max_new_tokens=9)
  np.testing.assert_array_equal(one, single)


@pytest.mark.parametrize('beam_size', [1, 3])
def test_an_ensemble_of_two_identical_models_is_the_model(models, beam_size):
  options = dict(n_best=beam_size, beam_size=beam_size, max_new_tokens=9)
  tokens, scores, log_probs = search.generate_n_best(models[0], SRC, **options)
  twice = Ensemble([models[0], _model(1)])  # the same parameters, built again
  tokens2, scores2, log_probs2 = search.generate_n_best(twice, SRC, **options)
  np.testing.assert_array_equal(tokens2, tokens)
  np.testing.assert_allclose(scores2, scores, atol=1e-5)
  np.testing.assert_allclose(log_probs2, log_probs, atol=1e-5)


def test_two_different_models_decode_by_their_averaged_log_probabilities(models):
  """Greedy: every token is the argmax of the mean of the members' teacher-forced
  log-probabilities (pad excluded) given the tokens before it."""
  ensemble = Ensemble(models)
  tokens = np.asarray(search.generate(ensemble, SRC, beam_size=1, max_new_tokens=10))
  decoder_input = shift_right(jnp.asarray(tokens), models[0].config.bos_id)
  log_probs = [jax.nn.log_softmax(m(jnp.asarray(SRC), decoder_input)) for m in models]
  choices = [np.asarray(lp).argmax(-1) for lp in log_probs]
  assert (choices[0] != choices[1]).any()  # the members disagree: the test can tell
  mean = np.where(np.arange(40) == 0, -np.inf, np.asarray((log_probs[0] + log_probs[1]) / 2))
  for row in range(len(SRC)):
    for i in range(tokens.shape[1]):
      assert tokens[row, i] == mean[row, i].argmax(), (row, i)
      if tokens[row, i] == 2:
        break
  # log P of the ensemble's hypothesis: its renormalised average, token by token (pad excluded).
  scored = search.log_probability(ensemble, SRC, tokens)
  expected = jax.nn.log_softmax(mean)
  picked = np.take_along_axis(np.asarray(expected), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(scored, np.where(tokens != 0, picked, 0).sum(-1), atol=1e-4)


def test_members_with_another_vocabulary_are_refused(models):
  with pytest.raises(
    ValueError, match='model 2 of the ensemble has another vocabulary: vocab_size 41'
  ):
    Ensemble([models[0], _model(3, vocab_size=41)])


class _Pieces:
  def __init__(self, pieces):
    self.table = pieces

  def pieces(self, ids, side='target'):
    return [self.table[i] for i in ids]


def test_tokenizers_with_other_pieces_are_refused():
  config = configs.tiny_config(vocab_size=4)
  same = [_Pieces(['<pad>', 'a', 'b', 'c']), _Pieces(['<pad>', 'a', 'b', 'c'])]
  check_vocabularies(same, config)
  with pytest.raises(ValueError, match="another source vocabulary \\(id 2: 'x', model 1: 'b'\\)"):
    check_vocabularies([same[0], _Pieces(['<pad>', 'a', 'x', 'c'])], config)
