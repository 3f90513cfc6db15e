"""A tiny Transformer trained for a few hundred steps on the embedded corpus, in-process: a model
whose translations differ from sentence to sentence, for tests that compare decoders."""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np

from tests.helpers import tiny_run
from transformer.model.encoder_decoder import Transformer, TransformerConfig
from transformer.training import steps as training


def _batch(pairs: list[tuple[list[int], list[int]]], length: int) -> dict[str, np.ndarray]:
  """Unpacked rows (one example each) in the train step's batch format."""
  batch = {}
  for side, column in (('inputs', 0), ('targets', 1)):
    tokens = np.zeros((len(pairs), length), np.int32)
    for row, pair in enumerate(pairs):
      ids = pair[column][:length]
      tokens[row, : len(ids)] = ids
    batch[side] = tokens
    batch[f'{side}_segment_ids'] = (tokens > 0).astype(np.int32)
    batch[f'{side}_positions'] = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape)
  return batch


def train(config: TransformerConfig, tokenizer, *, steps: int = 300, seed: int = 0) -> Transformer:
  """`config`'s model after `steps` Adam steps (batches of 32 embedded training pairs)."""
  eos = config.eos_id
  pairs = [
    (tokenizer.encode(en)[:31] + [eos], tokenizer.encode(fr)[:31] + [eos])
    for en, fr in tiny_run.embedded_pairs('train', 2000)
  ]
  return train_on_pairs(config, pairs, steps=steps, seed=seed)


def train_on_pairs(
  config: TransformerConfig,
  pairs: list[tuple[list[int], list[int]]],
  *,
  steps: int,
  seed: int = 0,
  length: int = 32,
  learning_rate_scale: float = 0.5,
  warmup_steps: int = 50,
) -> Transformer:
  """`config`'s model after `steps` Adam steps on batches of 32 of `pairs` (ids with EOS)."""
  model = training.create_model(config, seed)
  optimizer, schedule = training.make_optimizer(config.d_model, warmup_steps, learning_rate_scale)
  graphdef, state, rngs = training.init_train_state(model, optimizer, seed)
  step = jax.jit(training.make_train_step(graphdef, optimizer, label_smoothing=0.1))
  order = np.random.default_rng(seed).permutation(len(pairs))
  for i in range(steps):
    rows = [pairs[j] for j in np.take(order, range(i * 32, (i + 1) * 32), mode='wrap')]
    state, _ = step(state, rngs, _batch(rows, length), schedule(i))
  model = nnx.merge(graphdef, state.params, rngs)
  model.eval()
  return model
