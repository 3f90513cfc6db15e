import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer import training
from transformer.training import DataParallel


def synthetic_batch(rows=16, length=12, vocab=40, seed=0):
  """One example per row with very uneven lengths (so devices hold different token counts)."""
  rng = np.random.default_rng(seed)
  batch = {}
  for name in ('inputs', 'targets'):
    lengths = rng.integers(1, length + 1, size=rows)
    lengths[:rows // 2] = rng.integers(1, 3, size=rows // 2)  # first devices get mostly padding
    tokens = rng.integers(3, vocab, size=(rows, length)).astype(np.int32)
    position = np.arange(length)[None, :]
    valid = position < lengths[:, None]
    batch[name] = np.where(valid, tokens, 0).astype(np.int32)
    batch[f'{name}_segment_ids'] = valid.astype(np.int32)
    batch[f'{name}_positions'] = np.where(valid, position, 0).astype(np.int32)
  return batch


def run_one_step(config, parallelism, batch, grad_accum_steps=1):
  model = training.create_model(config, seed=0)
  # Plain SGD with a large step: the update is the (globally normalised) gradient itself, so any
  # difference in how replicas reduce it shows. (Adam's first step is lr·sign(g): it would turn the
  # float noise of exactly-zero gradients, e.g. of the key bias, into lr-sized differences.)
  optimizer = optax.sgd(1.0)
  graphdef, state, rngs = training.init_train_state(model, optimizer, seed=0)
  parallel = DataParallel(parallelism)
  step = parallel.compile_train_step(training.make_train_step(
      graphdef, optimizer, label_smoothing=0.1, grad_accum_steps=grad_accum_steps,
      axis_name=parallel.axis_name))
  state, metrics = step(parallel.device_state(state), rngs, parallel.device_batch(batch))
  return parallel.host_state(state), parallel.metrics(metrics)


def test_shard_map_pmap_and_one_device_agree(tiny_config):
  assert jax.device_count() == 8
  batch = synthetic_batch()
  results = {mode: run_one_step(tiny_config, mode, batch) for mode in ('none', 'shard_map', 'pmap')}
  ref_state, ref_metrics = results['none']
  assert ref_metrics['tokens'] == float(batch['targets_segment_ids'].sum())
  for mode in ('shard_map', 'pmap'):
    state, metrics = results[mode]
    assert metrics['tokens'] == ref_metrics['tokens']
    np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], atol=1e-5, err_msg=mode)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
      np.testing.assert_allclose(a, b, atol=1e-5, err_msg=mode)
    assert int(state.step) == 1
  # The step did change the parameters.
  initial = training.create_model(tiny_config, seed=0)
  moved = [np.abs(a - np.asarray(b)).max() for a, b in
           zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(training.nnx.state(initial, training.nnx.Param)))]
  assert max(moved) > 1e-4


def test_gradient_accumulation_equals_one_big_batch(tiny_config):
  batch = synthetic_batch(rows=8)
  big, big_metrics = run_one_step(tiny_config, 'none', batch, grad_accum_steps=1)
  acc, acc_metrics = run_one_step(tiny_config, 'none', batch, grad_accum_steps=4)
  np.testing.assert_allclose(acc_metrics['loss'], big_metrics['loss'], atol=1e-5)
  for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(big.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_non_finite_loss_skips_the_update(tiny_config):
  model = training.create_model(tiny_config, seed=0)
  optimizer, _ = training.make_optimizer(tiny_config.d_model, warmup_steps=10)
  graphdef, state, rngs = training.init_train_state(model, optimizer, seed=0)
  # Poison one parameter so that the loss is NaN.
  params = jax.tree.map(lambda x: x, state.params)
  leaf = params['embed']['table']['embedding']
  leaf[...] = leaf[...].at[5, 0].set(jnp.nan)
  state = state.replace(params=params)
  step = jax.jit(training.make_train_step(graphdef, optimizer, label_smoothing=0.1))
  new_state, metrics = step(state, rngs, synthetic_batch(rows=4))
  assert int(metrics['skipped']) == 1 and int(new_state.step) == 1
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_label_smoothed_loss_matches_direct_computation():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 7))
  labels = jnp.array([[1, 2, 3], [4, 5, 0]])
  weights = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
  eps = 0.1
  loss_sum, weight_sum = training.label_smoothed_cross_entropy(logits, labels, weights, eps)
  target = optax.smooth_labels(jax.nn.one_hot(labels, 7), eps * 7 / 6)  # ε spread over the V-1 others
  target = jnp.where(jax.nn.one_hot(labels, 7) > 0, 1 - eps, eps / 6)
  ce = -(target * jax.nn.log_softmax(logits)).sum(-1)
  entropy = -(target * jnp.log(target)).sum(-1)
  np.testing.assert_allclose(loss_sum, ((ce - entropy) * weights).sum(), rtol=1e-5)
  assert float(weight_sum) == 5.0


def test_rsqrt_schedule_peaks_at_warmup():
  schedule = training.rsqrt_schedule(512, 4000)
  values = np.array([schedule(s) for s in (0, 1999, 3999, 3999 * 4 + 3)])
  assert values.argmax() == 2
  np.testing.assert_allclose(values[2], 512**-0.5 * 4000**-0.5, rtol=1e-5)
  np.testing.assert_allclose(values[3], values[2] / 2, rtol=1e-3)


def test_linear_schedule_warms_up_like_rsqrt_then_reaches_zero_at_the_last_step():
  rsqrt = training.rsqrt_schedule(256, 200, scale=0.45)
  linear = training.linear_decay_schedule(256, 200, total_steps=1000, scale=0.45)
  for count in (0, 57, 199):  # same warm-up and peak
    np.testing.assert_allclose(linear(count), rsqrt(count), rtol=1e-5)
  values = np.array([linear(c) for c in range(199, 1001)])
  assert np.all(np.diff(values) < 0)  # strictly decreasing after the peak
  np.testing.assert_allclose(values[(599 - 199)], values[0] / 2, rtol=1e-2)  # halfway at step 600
  assert 0 < float(linear(999)) < values[0] / 100  # the last update is tiny but not zero
  assert float(linear(1000)) == 0.0


def test_make_optimizer_rejects_unknown_schedule():
  with pytest.raises(ValueError, match="schedule must be one of"):
    training.make_optimizer(64, 10, schedule='cosine')
  with pytest.raises(ValueError, match='needs total_steps'):
    training.make_optimizer(64, 10, schedule='linear')


def test_decoder_input_restarts_at_each_packed_example():
  targets = jnp.array([[5, 6, 2, 7, 2, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0]])
  positions = jnp.array([[0, 1, 2, 0, 1, 0]])
  out = training.decoder_input_from_targets(targets, segments, positions, bos_id=1, pad_id=0)
  np.testing.assert_array_equal(out, [[1, 5, 6, 1, 7, 0]])


def test_unknown_parallelism_is_rejected():
  with pytest.raises(ValueError, match='parallelism'):
    DataParallel('tensor')
