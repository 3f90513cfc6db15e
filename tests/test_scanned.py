"""Scanned layer stacks: the same model as one block per layer, in training, under a mesh, and
converted both ways; decoding asks for the unrolled layout."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.configs import tiny_config
from transformer import Transformer, shift_right
from transformer.decoding import search
from transformer.model import scanned
from transformer.parallel import strategies as parallel
from transformer.parallel.sharding import RULES
from transformer.training import steps as training

CONFIG = tiny_config(num_encoder_layers=3, num_decoder_layers=2, num_heads=8, vocab_size=64)
SRC = jnp.array([[5, 6, 7, 8, 2, 0], [9, 10, 11, 2, 0, 0]])
TGT = jnp.array([[12, 13, 14, 2, 0], [15, 16, 2, 0, 0]])


def _pair():
  model = Transformer(CONFIG, rngs=nnx.Rngs(0))
  model.eval()
  return model, scanned.scanned(model)


def _loss(model):
  logits = model(SRC, shift_right(TGT, CONFIG.bos_id))
  weights = (TGT != 0).astype(jnp.float32)
  total, count = training.label_smoothed_cross_entropy(logits, TGT, weights, 0.1)
  return total / count


def test_scanned_stacks_compute_what_the_unrolled_ones_compute():
  model, stacked = _pair()
  assert stacked.config.scan_layers and stacked.encoder.layers.self_attention.w_qkv.shape[0] == 3
  np.testing.assert_allclose(
    stacked(SRC, shift_right(TGT, 1)), model(SRC, shift_right(TGT, 1)), atol=1e-5
  )
  grads = nnx.to_pure_dict(nnx.grad(_loss)(model))
  stacked_grads = scanned.convert_params(nnx.to_pure_dict(nnx.grad(_loss)(stacked)), False)
  flat = dict(jax.tree_util.tree_leaves_with_path(grads))
  for path, value in jax.tree_util.tree_leaves_with_path(stacked_grads):
    np.testing.assert_allclose(np.asarray(value), np.asarray(flat[path]), atol=1e-6, err_msg=path)


def test_conversion_round_trip_is_exact_and_keeps_the_layer_axis_name():
  model, stacked = _pair()
  again = scanned.unrolled(stacked)
  for a, b in zip(
    jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with nnx.logical_axis_rules(RULES):
    spec = nnx.get_partition_spec(nnx.state(stacked, nnx.Param))
  assert tuple(spec['decoder']['layers']['feed_forward']['w_1']['kernel'].get_value()) == (
    None,
    'fsdp',
    'tensor',
  )


def test_decoding_asks_for_the_unrolled_layout_and_then_equals_the_model():
  model, stacked = _pair()
  with pytest.raises(
    ValueError, match=r'decode with transformer\.model\.scanned\.unrolled\(model\)'
  ):
    search.generate(stacked, SRC, beam_size=2, max_new_tokens=5)
  np.testing.assert_array_equal(
    search.generate(scanned.unrolled(stacked), SRC, beam_size=2, max_new_tokens=5),
    search.generate(model, SRC, beam_size=2, max_new_tokens=5),
  )


def test_a_scanned_model_trains_with_dropout_and_on_a_mesh_as_one_device():
  from tests.helpers.batches import packed_batch

  config = CONFIG.replace(scan_layers=True, dropout_rate=0.1)
  losses = []
  for mode in (parallel.make('none'), parallel.make('gspmd', mesh=(2, 2, 2))):
    optimizer, _ = training.make_optimizer(config.d_model, warmup_steps=10)
    graphdef, state, rngs = training.init_train_state(
      training.create_model(config, seed=0), optimizer, seed=0
    )
    step = mode.compile_train_step(
      training.make_train_step(graphdef, optimizer, label_smoothing=0.1, axis_name=None)
    )
    placed = mode.device_state(jax.tree.map(np.asarray, state))
    for index in range(2):
      placed, metrics = step(placed, rngs, mode.device_batch(packed_batch(index)), 1e-3)
      losses.append(mode.metrics(metrics)['loss'])
  assert np.isfinite(losses).all()
  np.testing.assert_allclose(losses[2:], losses[:2], rtol=1e-5)  # the mesh = one device
