"""Sampling: top-k = 1 is greedy, seeded samples repeat across runs and batch compositions, and
the tokens drawn follow the model's softmax (restricted to the top-k / top-p set)."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import configs
from transformer import Transformer
from transformer.decoding import search
from transformer.decoding.batch import Batch
from transformer.decoding.options import Sampling
from transformer.decoding.sampling import filtered_logits
from transformer.model.encoder_decoder import shift_right

SRC = np.array([[5, 6, 7, 8, 2, 0], [9, 10, 11, 2, 0, 0], [12, 2, 0, 0, 0, 0]], np.int32)


@pytest.fixture(scope='module')
def model():
  m = Transformer(configs.tiny_config(), rngs=nnx.Rngs(4))
  m.eval()
  return m


def test_top_k_one_is_greedy(model):
  greedy = search.generate(model, SRC, beam_size=1, max_new_tokens=8)
  sampled = search.generate(
    model, SRC, beam_size=1, max_new_tokens=8, sampling=Sampling(top_k=1, temperature=0.7, seed=3)
  )
  np.testing.assert_array_equal(sampled, greedy)


def test_a_seeded_sample_repeats_across_runs_and_batch_compositions(model):
  sampling = Sampling(temperature=1.5, seed=11)
  together = np.asarray(
    search.generate(model, SRC, beam_size=1, max_new_tokens=8, sampling=sampling)
  )
  again = np.asarray(search.generate(model, SRC, beam_size=1, max_new_tokens=8, sampling=sampling))
  np.testing.assert_array_equal(together, again)
  alone = np.asarray(
    search.generate(
      model, Batch.of(SRC[2:3], row_seeds=[2]), beam_size=1, max_new_tokens=8, sampling=sampling
    )
  )
  np.testing.assert_array_equal(alone[0], together[2])
  other_seed = search.generate(
    model, SRC, beam_size=1, max_new_tokens=8, sampling=Sampling(temperature=1.5, seed=12)
  )
  assert not np.array_equal(np.asarray(other_seed), together)


def _first_token_probabilities(model, src_row, sampling):
  logits = model(jnp.asarray(src_row[None]), shift_right(jnp.zeros((1, 1), jnp.int32), 1))[:, 0]
  logits = jnp.where(jnp.arange(logits.shape[-1]) == model.config.pad_id, -jnp.inf, logits)
  return np.asarray(jax.nn.softmax(filtered_logits(logits, sampling))[0])


@pytest.mark.parametrize(
  'sampling', [Sampling(temperature=2.0), Sampling(temperature=2.0, top_k=5), Sampling(top_p=0.5)]
)
def test_drawn_tokens_follow_the_models_softmax(model, sampling):
  """4,000 first tokens drawn for one source (4,000 seeds) against softmax(logits / T) over the
  allowed set: total variation distance under 0.05, and nothing outside the set."""
  count = 4000
  rows = np.repeat(SRC[:1], count, axis=0)
  drawn = np.asarray(
    search.generate(
      model,
      Batch.of(rows, row_seeds=np.arange(count)),
      beam_size=1,
      max_new_tokens=1,
      sampling=sampling,
    )
  )[:, 0]
  expected = _first_token_probabilities(model, SRC[0], sampling)
  observed = np.bincount(drawn, minlength=expected.size) / count
  assert observed[expected == 0].sum() == 0
  assert 0.5 * np.abs(observed - expected).sum() < 0.05
  assert (expected > 0.01).sum() >= 2  # a distribution, not one certain token
