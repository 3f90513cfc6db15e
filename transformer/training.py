"""Teacher-forcing loss, the train and eval steps, and their data-parallel wrappers.

Teacher forcing is one masked forward pass: the decoder reads the target shifted right
(`[BOS] + target[:-1]`, restarted per packed example), the causal mask hides the future, and the
loss covers every target position at once.

Data parallelism (`parallelism`):
  'shard_map' (default)  jax.jit(jax.shard_map(step)) over a 1-D 'data' mesh of every device of
                         every host; the state is replicated, the batch split along its rows.
  'pmap'                 the same per-replica step under jax.pmap (state with a device axis).
  'none'                 one device, plain jax.jit.
Gradients and metrics are reduced as *sums* over tokens (psum of loss-sum and weight-sum), then
divided once, so uneven padding across devices does not bias the loss.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from transformer.model import Transformer, TransformerConfig

PARALLELISMS = ('shard_map', 'pmap', 'none')
AXIS = 'data'
Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: the step number, parameters and optimizer state.

  `rng` is the base key (raw uint32 data) from which every step derives its dropout keys, so a
  resumed run draws exactly the masks an uninterrupted one would.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


SCHEDULES = ('rsqrt', 'linear')


def rsqrt_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
  """The paper's lr = scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5) (step from 1)."""
  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)
  return schedule


def linear_decay_schedule(d_model: int, warmup_steps: int, total_steps: int,
                          scale: float = 1.0) -> optax.Schedule:
  """The paper's warm-up to the same peak, then a straight line to 0 at `total_steps`.

  For budgeted runs: the rsqrt schedule is still at half its peak after 4·warmup steps, so a run
  that stops early never anneals; decaying to zero by the last step does.
  """
  peak = scale * d_model**-0.5 * warmup_steps**-0.5
  warmup = min(warmup_steps, total_steps)
  return optax.join_schedules(
      [optax.linear_schedule(peak / warmup_steps, peak, warmup - 1),
       optax.linear_schedule(peak, 0.0, max(total_steps - warmup + 1, 1))],
      [warmup - 1])


def make_optimizer(d_model: int, warmup_steps: int, learning_rate_scale: float = 1.0,
                   b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9,
                   max_grad_norm: float | None = None, schedule: str = 'rsqrt',
                   total_steps: int | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam(β₁ 0.9, β₂ 0.98, ε 1e-9) with the paper's rsqrt warm-up schedule (§5.3) or, with
  `schedule='linear'`, the same warm-up and a linear decay to 0 at `total_steps`."""
  if schedule == 'rsqrt':
    lr = rsqrt_schedule(d_model, warmup_steps, learning_rate_scale)
  elif schedule == 'linear':
    if not total_steps:
      raise ValueError("schedule='linear' needs total_steps")
    lr = linear_decay_schedule(d_model, warmup_steps, total_steps, learning_rate_scale)
  else:
    raise ValueError(f'schedule must be one of {SCHEDULES}, got {schedule!r}')
  adam = optax.adam(lr, b1=b1, b2=b2, eps=eps)
  if max_grad_norm:
    adam = optax.chain(optax.clip_by_global_norm(max_grad_norm), adam)
  return adam, lr


def decoder_input_from_targets(targets: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                               bos_id: int, pad_id: int) -> jax.Array:
  """`[BOS] + target[:-1]` for every (packed) example: BOS where an example starts (position 0),
  else the previous token; padding stays padding. All `[batch, length]` int."""
  previous = jnp.pad(targets, ((0, 0), (1, 0)), constant_values=pad_id)[:, :-1]
  shifted = jnp.where(positions == 0, bos_id, previous)
  return jnp.where(segment_ids > 0, shifted, pad_id)


def label_smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                                 label_smoothing: float) -> tuple[jax.Array, jax.Array]:
  """Summed label-smoothed cross-entropy and summed weights.

  The smoothed target puts 1-ε on the label and ε/(V-1) elsewhere; the constant entropy of that
  target is subtracted so that a perfect prediction scores 0 (as in tensor2tensor).

  Args:
    logits: `[batch, length, vocab]` float32.
    labels: `[batch, length]` int.
    weights: `[batch, length]` 1.0 on real target tokens, 0.0 on padding.

  Returns:
    (loss summed over tokens, number of tokens), both float32 scalars.
  """
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
  # Σ_v target_v · log p_v = (1-ε-low)·z_label + low·Σ_v z_v - logsumexp(z), since the target sums
  # to 1: two reductions over the logits, with neither log-probabilities nor a one-hot target
  # materialised (the logits are the largest tensor of the step at small d_model).
  label_logit = jnp.sum(jnp.where(jnp.arange(vocab) == labels[..., None], logits, 0.0), axis=-1)
  loss = (jax.nn.logsumexp(logits, axis=-1) - (confidence - low) * label_logit
          - low * logits.sum(-1) - normalizer)
  return (loss * weights).sum(), weights.sum()


def _forward(model: Transformer, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Teacher forcing: logits `[batch, length, vocab]`, labels and weights `[batch, length]`."""
  config = model.config
  targets = batch['targets']
  decoder_input = decoder_input_from_targets(targets, batch['targets_segment_ids'],
                                             batch['targets_positions'], config.bos_id, config.pad_id)
  logits = model(batch['inputs'], decoder_input,
                 src_segments=batch['inputs_segment_ids'], tgt_segments=batch['targets_segment_ids'],
                 src_positions=batch['inputs_positions'], tgt_positions=batch['targets_positions'])
  weights = (batch['targets_segment_ids'] > 0).astype(jnp.float32)
  return logits, targets, weights


def _psum(tree, axis_name: str | None):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                    label_smoothing: float, grad_accum_steps: int = 1,
                    axis_name: str | None = None) -> Callable:
  """The per-replica train step `(state, rngs, batch) -> (state, metrics)`.

  `rngs` is the model's non-parameter state (its dropout streams), reseeded every step. With
  `grad_accum_steps > 1` the replica's batch is split into that many micro-batches whose summed
  gradients make one update. A non-finite loss or gradient leaves parameters and optimizer state
  unchanged (`metrics['skipped'] = 1`).
  """

  def loss_fn(params, rngs, batch, dropout_key):
    # A fresh copy of the rng Variables at this trace level, so that reseeding may mutate them.
    rngs = jax.tree.map(lambda x: x, rngs)
    model = nnx.merge(graphdef, params, rngs)
    nnx.reseed(model, dropout=dropout_key)
    logits, labels, weights = _forward(model, batch)
    loss_sum, weight_sum = label_smoothed_cross_entropy(logits, labels, weights, label_smoothing)
    return loss_sum, weight_sum

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, rngs, batch: Batch):
    replica = 0 if axis_name is None else jax.lax.axis_index(axis_name)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step), replica)
    rows = batch['inputs'].shape[0]
    if rows % grad_accum_steps:
      raise ValueError(f'{rows} rows per replica are not divisible by grad_accum_steps={grad_accum_steps}')
    micro = jax.tree.map(lambda x: x.reshape((grad_accum_steps, rows // grad_accum_steps) + x.shape[1:]), batch)

    def accumulate(carry, inputs):
      index, micro_batch = inputs
      (loss_sum, weight_sum), grads = grad_fn(state.params, rngs, micro_batch, jax.random.fold_in(key, index))
      return jax.tree.map(jnp.add, carry, (grads, loss_sum, weight_sum)), None

    zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    if grad_accum_steps == 1:
      totals, _ = accumulate(zeros, (0, jax.tree.map(lambda x: x[0], micro)))
    else:
      totals, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
    grads, loss_sum, weight_sum = _psum(totals, axis_name)
    denominator = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              opt_state=keep(opt_state, state.opt_state))
    metrics = {'loss': loss_sum / denominator, 'tokens': weight_sum, 'grad_norm': grad_norm,
               'skipped': 1 - finite.astype(jnp.int32)}
    return new_state, metrics

  return step


def make_eval_step(graphdef: nnx.GraphDef, *, axis_name: str | None = None) -> Callable:
  """Per-replica eval step `(params, rngs, batch) -> sums` of NLL, correct tokens and tokens."""

  def step(params, rngs, batch: Batch):
    model = nnx.merge(graphdef, params, rngs)
    logits, labels, weights = _forward(model, batch)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    correct = (logits.argmax(-1) == labels).astype(jnp.float32)
    sums = {'nll': (nll * weights).sum(), 'correct': (correct * weights).sum(), 'tokens': weights.sum()}
    return _psum(sums, axis_name)

  return step


class DataParallel:
  """Places state and batches on the devices and compiles steps for one `parallelism` mode.

  The state lives *replicated*: as global arrays with a replicated sharding (shard_map, none) or
  with a leading local-device axis (pmap). `host_state`/`device_state` convert between that and
  plain host values, so checkpoints are the same whatever the mode or device count.
  """

  def __init__(self, parallelism: str = 'shard_map'):
    if parallelism not in PARALLELISMS:
      raise ValueError(f'parallelism must be one of {PARALLELISMS}, got {parallelism!r}')
    self.parallelism = parallelism
    if parallelism == 'none':
      self.devices = [jax.local_devices()[0]]
      if jax.process_count() > 1:
        raise ValueError("parallelism='none' is single-device; use 'shard_map' or 'pmap' with several hosts")
    elif parallelism == 'pmap':
      self.devices = jax.local_devices()
    else:
      self.devices = jax.devices()
    self.mesh = Mesh(np.asarray(self.devices if parallelism != 'pmap' else jax.devices()), (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.rows = NamedSharding(self.mesh, P(AXIS))

  @property
  def num_replicas(self) -> int:
    """Replicas across all hosts (the global batch is split this many ways)."""
    return 1 if self.parallelism == 'none' else jax.device_count()

  @property
  def local_replicas(self) -> int:
    return 1 if self.parallelism == 'none' else jax.local_device_count()

  @property
  def axis_name(self) -> str | None:
    return None if self.parallelism == 'none' else AXIS

  def device_state(self, tree):
    """Host values -> the replicated on-device layout of this mode."""
    if self.parallelism == 'pmap':
      # A leading axis of local devices; pmap places one slice on each device.
      n = len(self.devices)
      return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)).copy(), tree)
    if self.parallelism == 'none':
      return jax.device_put(tree, self.devices[0])
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

  def host_state(self, tree):
    """The on-device layout -> one host copy (NumPy)."""
    if self.parallelism == 'pmap':
      return jax.tree.map(lambda x: np.asarray(x[0]), tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

  def device_batch(self, local_batch: dict[str, np.ndarray]) -> Batch:
    """This host's rows -> the step's batch layout (global rows sharded over every device)."""
    if self.parallelism == 'pmap':
      n = self.local_replicas
      return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in local_batch.items()}
    if self.parallelism == 'none':
      return jax.device_put(local_batch, self.devices[0])
    return {k: jax.make_array_from_process_local_data(self.rows, v) for k, v in local_batch.items()}

  def compile_train_step(self, step: Callable) -> Callable:
    if self.parallelism == 'pmap':
      return jax.pmap(step, axis_name=AXIS, in_axes=(0, None, 0), donate_argnums=(0,))
    if self.parallelism == 'none':
      return jax.jit(step, donate_argnums=(0,))
    # check_vma=False: gradients of the replicated parameters stay per-replica partial sums inside
    # the step, and the step reduces them itself with one explicit psum (as pmap does).
    sharded = jax.shard_map(step, mesh=self.mesh, in_specs=(P(), P(), P(AXIS)), out_specs=(P(), P()),
                            check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,))

  def compile_eval_step(self, step: Callable) -> Callable:
    if self.parallelism == 'pmap':
      return jax.pmap(step, axis_name=AXIS, in_axes=(0, None, 0))
    if self.parallelism == 'none':
      return jax.jit(step)
    return jax.jit(jax.shard_map(step, mesh=self.mesh, in_specs=(P(), P(), P(AXIS)), out_specs=P(),
                                 check_vma=False))

  def metrics(self, metrics) -> dict[str, float]:
    """Step outputs (replicated) -> Python floats."""
    if self.parallelism == 'pmap':
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def create_model(config: TransformerConfig, seed: int) -> Transformer:
  """A model whose parameters come from `seed` and whose dropout streams are reseeded per step."""
  return Transformer(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def init_train_state(model: Transformer, optimizer: optax.GradientTransformation, seed: int
                     ) -> tuple[nnx.GraphDef, TrainState, Any]:
  """Splits `model` into (graphdef, TrainState on the host, the non-parameter rng state)."""
  graphdef, params, rngs = nnx.split(model, nnx.Param, ...)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                     rng=jax.random.key_data(jax.random.key(seed)))
  return graphdef, state, rngs
