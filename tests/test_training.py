import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import common
from transformer import shift_right
from transformer.parallel import strategies as parallel_lib
from transformer.training import steps as training


def synthetic_batch(rows=16, length=12, vocab=40, seed=0):
  """One example per row with very uneven lengths (so devices hold different token counts)."""
  return common.synthetic_batch(rows, length, vocab, seed=seed, min_fraction=0.0, uneven=True)


def run_one_step(config, parallelism, batch, grad_accum_steps=1, devices=None):
  model = training.create_model(config, seed=0)
  # Plain SGD with a large step: the update is the (globally normalised) gradient itself, so any
  # difference in how replicas reduce it shows. (Adam's first step is lr·sign(g): it would turn the
  # float noise of exactly-zero gradients, e.g. of the key bias, into lr-sized differences.)
  optimizer = optax.sgd(1.0)
  graphdef, state, rngs = training.init_train_state(model, optimizer, seed=0)
  parallel = parallel_lib.make(parallelism, devices)
  step = parallel.compile_train_step(
    training.make_train_step(
      graphdef,
      optimizer,
      label_smoothing=0.1,
      grad_accum_steps=grad_accum_steps,
      axis_name=parallel.axis_name,
    )
  )
  state, metrics = step(parallel.device_state(state), rngs, parallel.device_batch(batch), 1.0)
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
  moved = [
    np.abs(a - np.asarray(b)).max()
    for a, b in zip(
      jax.tree.leaves(ref_state.params),
      jax.tree.leaves(training.nnx.state(initial, training.nnx.Param)),
    )
  ]
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
  new_state, metrics = step(state, rngs, synthetic_batch(rows=4), 1e-3)
  assert int(metrics['skipped']) == 1 and int(new_state.step) == 1
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_label_smoothed_loss_matches_direct_computation():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 7))
  labels = jnp.array([[1, 2, 3], [4, 5, 0]])
  weights = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
  eps = 0.1
  loss_sum, weight_sum = training.label_smoothed_cross_entropy(logits, labels, weights, eps)
  target = optax.smooth_labels(
    jax.nn.one_hot(labels, 7), eps * 7 / 6
  )  # ε spread over the V-1 others
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
  with pytest.raises(ValueError, match='schedule must be one of'):
    training.make_optimizer(64, 10, schedule='cosine')
  with pytest.raises(ValueError, match='needs total_steps'):
    training.make_optimizer(64, 10, schedule='linear')


def test_decoder_input_restarts_at_each_packed_example():
  targets = jnp.array([[5, 6, 2, 7, 2, 0], [8, 9, 10, 2, 0, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(
    shift_right(targets, 1, segments), [[1, 5, 6, 1, 7, 0], [1, 8, 9, 10, 0, 0]]
  )
  # Without segments: one example per row, [BOS] + target[:-1].
  np.testing.assert_array_equal(shift_right(targets, 1), [[1, 5, 6, 2, 7, 2], [1, 8, 9, 10, 2, 0]])


def test_gradients_are_the_same_on_one_and_on_four_devices_leaf_by_leaf(tiny_config):
  """With SGD(1.0) the update is the gradient: compare it per leaf, so that a scale that Adam
  would hide (e.g. every gradient × the device count) cannot pass."""
  batch = synthetic_batch(rows=8)  # uneven padding: the first devices get mostly padding
  initial = training.init_train_state(
    training.create_model(tiny_config, seed=0), optax.sgd(1.0), 0
  )[1]
  gradient = lambda state: jax.tree.map(
    lambda a, b: np.asarray(a) - np.asarray(b), initial.params, state.params
  )
  reference = gradient(run_one_step(tiny_config, 'none', batch)[0])
  for mode in ('shard_map', 'pmap'):
    grads = gradient(run_one_step(tiny_config, mode, batch, devices=jax.devices()[:4])[0])
    flat = jax.tree_util.tree_flatten_with_path(reference)[0]
    for (path, expected), got in zip(flat, jax.tree.leaves(grads)):
      scale = np.abs(expected).max()
      if scale > 1e-6:
        np.testing.assert_allclose(
          got, expected, atol=1e-4 * scale, err_msg=f'{mode} {jax.tree_util.keystr(path)}'
        )


def test_eval_step_is_deterministic_and_matches_a_hand_computation(tiny_config):
  """With dropout 0.3 the eval step equals the deterministic forward pass: NLL and accuracy
  summed over the real target tokens only (filler rows and padding weigh nothing)."""
  config = tiny_config.replace(dropout_rate=0.3)
  model = training.create_model(config, seed=0)
  graphdef, state, rngs = training.init_train_state(model, optax.sgd(1.0), seed=0)
  batch = synthetic_batch(rows=4)
  for name in batch:  # a filler row of padding, as the last eval batch has
    batch[name][-1] = 0
  sums = jax.jit(training.make_eval_step(graphdef))(state.params, rngs, batch)
  model.eval()
  logits = np.asarray(
    model(batch['inputs'], shift_right(jnp.asarray(batch['targets']), config.bos_id)), np.float64
  )
  log_probs = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  weights = batch['targets_segment_ids'] > 0
  labels = batch['targets']
  nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(sums['nll']), nll[weights].sum(), rtol=1e-5)
  assert float(sums['correct']) == (logits.argmax(-1) == labels)[weights].sum()
  assert float(sums['tokens']) == weights.sum()


def test_gradient_clipping_bounds_the_update_when_max_grad_norm_is_set(tiny_config):
  model = training.create_model(tiny_config, seed=0)
  batch = synthetic_batch(rows=4)
  norms = {}
  for clip in (None, 1e-3):
    optimizer = (
      optax.chain(optax.clip_by_global_norm(clip), optax.sgd(1.0)) if clip else optax.sgd(1.0)
    )
    graphdef, state, rngs = training.init_train_state(model, optimizer, seed=0)
    new_state, metrics = jax.jit(
      training.make_train_step(graphdef, optimizer, label_smoothing=0.1)
    )(state, rngs, batch, 1.0)
    update = jax.tree.map(lambda a, b: a - b, new_state.params, state.params)
    norms[clip] = float(optax.tree.norm(update))
  assert norms[None] > 0.1  # the raw gradient is large ...
  np.testing.assert_allclose(norms[1e-3], 1e-3, rtol=1e-3)  # ... and clipped to max_grad_norm
  # make_optimizer adds the clipping when asked.
  optimizer, _ = training.make_optimizer(32, 10, max_grad_norm=1e-3)
  assert 'clip' in str(optimizer).lower() or len(optimizer.init(state.params)) == 2


def test_linear_schedule_shorter_than_its_warmup_still_ends_at_zero():
  schedule = training.linear_decay_schedule(64, warmup_steps=100, total_steps=10)
  rsqrt = training.rsqrt_schedule(64, 100)
  for count in range(9):  # the same warm-up line ...
    np.testing.assert_allclose(schedule(count), rsqrt(count), rtol=1e-5)
  assert float(schedule(10)) == 0.0  # ... and 0 at the end, not the peak


def test_unknown_parallelism_is_rejected():
  with pytest.raises(ValueError, match='parallelism'):
    parallel_lib.make('tensor')
