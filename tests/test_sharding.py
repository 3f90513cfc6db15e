"""The ('data', 'fsdp', 'tensor') mesh on 8 simulated CPU devices: every layout computes the loss
and gradients one device computes, holds the state split as its shardings say, and checkpoints
move between layouts and onto one device."""

from flax import nnx
import jax
import numpy as np
import pytest

from tests.helpers import batches
from tests.helpers.configs import tiny_config
from transformer.parallel import sharding, strategies as parallel
from transformer.training import checkpoints, steps as training

# 8 heads and a vocabulary of 64: every layout below divides them.
CONFIG = tiny_config(vocab_size=64, num_heads=8, max_positions=32)
LAYOUTS = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]
ROWS, LENGTH = 8, 24


def _packed_batch(seed: int = 0) -> dict[str, np.ndarray]:
  return batches.packed_batch(seed, ROWS, LENGTH, CONFIG.vocab_size)


def _loss_function():
  model = training.create_model(CONFIG, seed=0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, batch):
    logits, labels, weights = training._forward(nnx.merge(graphdef, params, rest), batch)
    total, count = training.label_smoothed_cross_entropy(logits, labels, weights, 0.1)
    return total / count

  return jax.value_and_grad(loss), params


@pytest.fixture(scope='module')
def one_device():
  grad_fn, params = _loss_function()
  batch = _packed_batch()
  assert len(np.unique(np.count_nonzero(batch['inputs_segment_ids'], axis=1))) > 1  # uneven
  return jax.jit(grad_fn)(params, batch)


@pytest.mark.parametrize('layout', LAYOUTS, ids=lambda m: 'x'.join(map(str, m)))
def test_every_layout_gives_one_devices_loss_and_gradients(layout, one_device):
  grad_fn, params = _loss_function()
  mode = parallel.make('gspmd', mesh=layout)
  placed = mode.device_state(params)
  loss, grads = jax.jit(grad_fn)(placed, mode.device_batch(_packed_batch()))
  expected_loss, expected_grads = one_device
  # float32 sums in another order: agreement to ~1e-6 of each gradient's scale.
  np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-5)
  flat, expected = nnx.to_flat_state(grads), dict(nnx.to_flat_state(expected_grads))
  for path, value in flat:
    reference = np.asarray(expected[path][...])
    scale = np.abs(reference).max() + 1e-8
    np.testing.assert_allclose(np.asarray(value[...]), reference, atol=2e-5 * scale, err_msg=path)
  embedding = placed['embed']['table']['embedding']
  split = {'fsdp': layout[1], 'tensor': layout[2]}
  assert embedding[...].sharding.shard_shape(embedding[...].shape) == (
    64 // split['tensor'],
    32 // split['fsdp'],
  )


@pytest.mark.parametrize('layout, ways', [((8, 1, 1), 1), ((2, 4, 1), 4), ((1, 1, 8), 8)])
def test_each_device_holds_its_share_of_parameters_and_adam_moments(layout, ways):
  import optax

  _, params = _loss_function()
  host = {'params': params, 'adam': optax.adam(1e-3).init(params)}
  total = sum(np.asarray(x).nbytes for x in jax.tree.leaves(host))
  placed = parallel.make('gspmd', mesh=layout).device_state(host)
  whole = sum(  # arrays the layout keeps whole on every device (LayerNorms, odd sizes)
    x.nbytes for x in jax.tree.leaves(placed) if x.sharding.is_fully_replicated
  )
  held = sharding.per_device_bytes(placed)
  assert len(held) == 8
  for device_bytes in held.values():
    assert device_bytes == pytest.approx(whole + (total - whole) / ways, rel=1e-6)
  if ways > 1:
    assert whole < 0.1 * total and max(held.values()) < 1.5 * total / ways


def _steps(mode: parallel.DataParallel, state, count: int, first: int):
  """`count` steps from `state` (host arrays, or arrays already in `mode`'s layout): the state
  in `mode`'s layout and the last step's metrics."""
  model = training.create_model(CONFIG, seed=0)
  optimizer, _ = training.make_optimizer(CONFIG.d_model, warmup_steps=10)
  graphdef, _, rngs = training.init_train_state(model, optimizer, seed=0)
  step = mode.compile_train_step(
    training.make_train_step(graphdef, optimizer, label_smoothing=0.1, axis_name=mode.axis_name)
  )
  device_state = mode.device_state(state)
  for index in range(first, first + count):
    device_state, metrics = step(device_state, rngs, mode.device_batch(_packed_batch(index)), 1e-3)
  return device_state, mode.metrics(metrics)


def test_a_checkpoint_moves_from_8_replicas_to_a_2x2x2_mesh_to_one_device(tmp_path):
  model = training.create_model(CONFIG, seed=0)
  optimizer, _ = training.make_optimizer(CONFIG.d_model, warmup_steps=10)
  _, initial, _ = training.init_train_state(model, optimizer, seed=0)
  initial = jax.tree.map(np.asarray, initial)  # a host copy: the steps donate their inputs
  straight, _ = _steps(parallel.make('none'), initial, 4, 0)

  replicas = parallel.make('shard_map')  # 8 replicas
  first, _ = _steps(replicas, initial, 2, 0)
  saver = checkpoints.Checkpointer(str(tmp_path / 'a'))
  saver.save(2, replicas.checkpoint_state(first))
  saver.wait()
  mesh = parallel.make('gspmd', mesh=(2, 2, 2))
  restored = checkpoints.Checkpointer(str(tmp_path / 'a')).restore(mesh.restore_target(initial))
  assert restored.step == 2
  # Orbax read the arrays straight into the mesh's shardings; placing them moves nothing.
  embedding = restored.state.params['embed']['table']['embedding'][...]
  assert (
    embedding.sharding.spec
    == mesh.device_state(initial).params['embed']['table']['embedding'][...].sharding.spec
  )
  assert embedding.sharding.shard_shape(embedding.shape) == (32, 16)
  assert mesh.device_state(restored.state).params['embed']['table']['embedding'][...] is embedding

  second, _ = _steps(mesh, restored.state, 2, 2)
  saver = checkpoints.Checkpointer(str(tmp_path / 'b'))
  saved = mesh.checkpoint_state(second)
  assert not saved.params['embed']['table']['embedding'][...].sharding.is_fully_replicated
  saver.save(4, saved)  # each device's shards, none gathered
  jax.tree.map(lambda x: x.delete(), saved)  # the save copied what it needs before returning
  saver.wait()
  on_one = checkpoints.Checkpointer(str(tmp_path / 'b'), read_only=True).restore_params(
    initial.params
  )
  for path, value in nnx.to_flat_state(on_one.state):
    assert isinstance(value[...], np.ndarray)
    reference = dict(nnx.to_flat_state(straight.params))[path][...]
    np.testing.assert_allclose(np.asarray(value[...]), np.asarray(reference), atol=2e-4)


def test_the_checksum_does_not_depend_on_the_layout():
  """The manifest's checksums of a host array and of the same array split any way agree; one
  changed element (or two swapped) changes them."""
  rng = np.random.default_rng(0)
  host = {
    'w': rng.normal(size=(64, 32)).astype(np.float32),
    'b': rng.normal(size=(8,)).astype(jax.numpy.bfloat16),
    'step': np.int32(7),
  }
  expected = checkpoints.manifest(host)
  for layout in LAYOUTS:
    mode = parallel.make('gspmd', mesh=layout)
    placed = jax.tree.map(
      lambda x, where: jax.device_put(x, where),
      host,
      {
        'w': jax.sharding.NamedSharding(mode.mesh, jax.P(('data', 'fsdp'), 'tensor')),
        'b': jax.sharding.NamedSharding(mode.mesh, jax.P('tensor')),
        'step': mode.replicated,
      },
    )
    assert checkpoints.manifest(placed) == expected
  changed = dict(host, w=host['w'].copy())
  changed['w'][3, 5] = np.nextafter(changed['w'][3, 5], np.float32(1))
  swapped = dict(host, w=host['w'][::-1].copy())
  for other in (changed, swapped):
    assert checkpoints.manifest(other)["['w']"] != expected["['w']"]
    assert checkpoints.manifest(other)["['b']"] == expected["['b']"]


def test_mesh_sizes_resolve_or_stop_in_one_line():
  assert sharding.mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert sharding.mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  for sizes, problem in [
    ((3, 1, 1), 'does not divide the 8 devices'),
    ((2, 2, 1), 'covers 4 devices, not the 8'),
    ((-1, -1, 1), 'at most one of them -1'),
    ((8, 1), 'give three sizes'),
  ]:
    with pytest.raises(sharding.MeshError, match=problem) as error:
      sharding.mesh_shape(sizes, 8)
    assert '\n' not in str(error.value)


def test_a_mesh_that_splits_the_model_needs_gspmd():
  from configs import default
  from transformer.training.config import ConfigError, validate_config

  config = default.get_config()
  config.mesh = (2, 2, 2)
  with pytest.raises(ConfigError, match="config.mesh .* needs parallelism='gspmd'"):
    validate_config(config)
  config.parallelism = 'gspmd'
  validate_config(config)
  config.mesh = (2, 0, 4)
  with pytest.raises(ConfigError, match=r'config.mesh \(2, 0, 4\): give three sizes'):
    validate_config(config)
  with pytest.raises(ValueError, match="needs parallelism='gspmd'"):
    parallel.make('shard_map', mesh=(1, 8, 1))
  # One rule, one message: the config's is the strategies' own, naming the config's field.
  for parallelism, mesh in [('shard_map', (2, 2, 2)), ('gspmd', (2, 0, 4)), ('nope', (-1, 1, 1))]:
    with pytest.raises(ValueError) as direct:
      parallel.make(parallelism, mesh=mesh)
    config.parallelism, config.mesh = parallelism, mesh
    with pytest.raises(ConfigError) as via_config:
      validate_config(config)
    assert str(via_config.value) == f'config.{direct.value}'


def test_the_fsdp_step_benchmark_runs_small_and_splits_the_state():
  from benchmarks import sharding as benchmark

  numbers = benchmark.fsdp_step_numbers(
    'tiny', rows_per_device=1, length=32, steps=1, dtype='float32', remat='minimal', vocab=512
  )
  assert numbers['devices'] == 8 and numbers['step_ms'] > 0 and numbers['tokens_per_second'] > 0
  whole_state = numbers['parameters'] * 4 * 3  # float32 parameters and two Adam moments
  assert numbers['state_bytes_per_device'] < 0.2 * whole_state  # split 8 ways, norms whole


def test_gradient_accumulation_on_a_mesh_equals_one_device():
  model = training.create_model(CONFIG, seed=0)
  optimizer, _ = training.make_optimizer(CONFIG.d_model, warmup_steps=10)
  graphdef, state, rngs = training.init_train_state(model, optimizer, seed=0)
  host = jax.tree.map(np.asarray, state)
  results = []
  for mode, accumulate in ((parallel.make('none'), 1), (parallel.make('gspmd', mesh=(2, 2, 2)), 2)):
    step = mode.compile_train_step(
      training.make_train_step(
        graphdef, optimizer, label_smoothing=0.1, grad_accum_steps=accumulate, axis_name=None
      )
    )
    new, metrics = step(mode.device_state(host), rngs, mode.device_batch(_packed_batch()), 1e-3)
    results.append((mode.metrics(metrics)['loss'], mode.host_state(new).params))
  (loss, params), (mesh_loss, mesh_params) = results
  assert mesh_loss == pytest.approx(loss, rel=1e-6)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(mesh_params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
