"""Teacher-forcing loss, the train and eval steps, the optimizer and its schedules.

Teacher forcing is one masked forward pass: the decoder reads the target shifted right
(`[BOS] + target[:-1]`, restarted per packed example), the causal mask hides the future, and the
loss covers every target position at once.

The steps are per-replica functions; `transformer.parallel.strategies` compiles them for one device,
shard_map or pmap. Gradients and metrics are reduced as *sums* over tokens (psum of loss-sum and
weight-sum), then divided once, so uneven padding across devices does not bias the loss.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
from flax import nnx
import jax
import jax.numpy as jnp
import optax

from transformer.model.encoder_decoder import Transformer, TransformerConfig, shift_right

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


Schedule = Callable[[int], float]


def rsqrt_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> Schedule:
  """The paper's lr = scale · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5) (step from 1).

  Schedules are plain functions of the update count (0 for the first update), evaluated on the
  host: the loop passes each step's learning rate to the train step."""

  def schedule(count: int) -> float:
    step = float(count) + 1.0
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)

  return schedule


def linear_decay_schedule(
  d_model: int, warmup_steps: int, total_steps: int, scale: float = 1.0
) -> Callable[..., float]:
  """The paper's warm-up line, then a straight line to 0 at `total_steps`.

  lr(count) = min(peak · step / warmup, top · (total - position) / (total - top_step + 1)), where
  step = count + 1, position = count (or, for a run that follows a time budget, how far the
  budget says the run is: `schedule(count, position)`), the warm-up ends at
  top_step = min(warmup, total) with rate top, and peak = scale · d_model^-0.5 · warmup^-0.5
  (rsqrt's peak). A run shorter than its warm-up therefore still ends at 0. For budgeted runs:
  the rsqrt schedule is still at half its peak after 4·warmup steps, so a run that stops early
  never anneals; decaying to zero does.
  """
  peak = scale * d_model**-0.5 * warmup_steps**-0.5
  top_step = min(warmup_steps, total_steps)
  top = peak * top_step / warmup_steps

  def schedule(count: int, position: float | None = None) -> float:
    position = float(count) if position is None else float(position)
    warm = peak * (float(count) + 1.0) / warmup_steps
    decay = top * (total_steps - position) / (total_steps - top_step + 1)
    return max(min(warm, decay), 0.0)

  return schedule


def _unit_rate(count: jax.Array) -> float:
  """Adam's learning rate inside the optimizer: 1 (the train step scales the update by the rate
  it is given). As a schedule, it keeps the step count in the optimizer state that checkpoints
  have always held."""
  del count
  return 1.0


def make_optimizer(
  d_model: int,
  warmup_steps: int,
  learning_rate_scale: float = 1.0,
  b1: float = 0.9,
  b2: float = 0.98,
  eps: float = 1e-9,
  max_grad_norm: float | None = None,
  schedule: str = 'rsqrt',
  total_steps: int | None = None,
) -> tuple[optax.GradientTransformation, Schedule]:
  """Adam(β₁ 0.9, β₂ 0.98, ε 1e-9) and the paper's rsqrt warm-up schedule (§5.3) or, with
  `schedule='linear'`, the same warm-up and a linear decay to 0 at `total_steps`. The train step
  takes the learning rate as an input: pass it `schedule(state.step)`."""
  if schedule == 'rsqrt':
    lr = rsqrt_schedule(d_model, warmup_steps, learning_rate_scale)
  elif schedule == 'linear':
    if not total_steps:
      raise ValueError("schedule='linear' needs total_steps")
    lr = linear_decay_schedule(d_model, warmup_steps, total_steps, learning_rate_scale)
  else:
    raise ValueError(f'schedule must be one of {SCHEDULES}, got {schedule!r}')
  adam = optax.adam(_unit_rate, b1=b1, b2=b2, eps=eps)
  if max_grad_norm:
    adam = optax.chain(optax.clip_by_global_norm(max_grad_norm), adam)
  return adam, lr


def label_smoothed_cross_entropy(
  logits: jax.Array, labels: jax.Array, weights: jax.Array, label_smoothing: float
) -> tuple[jax.Array, jax.Array]:
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
  loss = (
    jax.nn.logsumexp(logits, axis=-1)
    - (confidence - low) * label_logit
    - low * logits.sum(-1)
    - normalizer
  )
  return (loss * weights).sum(), weights.sum()


def _forward(model: Transformer, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Teacher forcing: logits `[batch, length, vocab]`, labels and weights `[batch, length]`."""
  targets = batch['targets']
  decoder_input = shift_right(targets, model.config.bos_id, batch['targets_segment_ids'])
  logits = model(
    batch['inputs'],
    decoder_input,
    src_segments=batch['inputs_segment_ids'],
    tgt_segments=batch['targets_segment_ids'],
    src_positions=batch['inputs_positions'],
    tgt_positions=batch['targets_positions'],
  )
  weights = (batch['targets_segment_ids'] > 0).astype(jnp.float32)
  return logits, targets, weights


def _psum(tree, axis_name: str | None):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def _summed_gradients(
  grad_fn: Callable, params: Any, rngs: Any, batch: Batch, key: jax.Array, grad_accum_steps: int
) -> tuple[Any, jax.Array, jax.Array]:
  """(gradients, loss, tokens) summed over `grad_accum_steps` micro-batches of this replica's
  rows; micro-batch i draws its dropout masks from `fold_in(key, i)`."""
  rows = batch['inputs'].shape[0]
  if rows % grad_accum_steps:
    raise ValueError(
      f'{rows} rows per replica are not divisible by grad_accum_steps={grad_accum_steps}'
    )
  micro = jax.tree.map(
    lambda x: x.reshape((grad_accum_steps, rows // grad_accum_steps) + x.shape[1:]), batch
  )

  def accumulate(carry, inputs):
    index, micro_batch = inputs
    (loss_sum, weight_sum), grads = grad_fn(
      params, rngs, micro_batch, jax.random.fold_in(key, index)
    )
    return jax.tree.map(jnp.add, carry, (grads, loss_sum, weight_sum)), None

  zero = jnp.zeros((), jnp.float32)
  zeros = (jax.tree.map(jnp.zeros_like, params), zero, zero)
  if grad_accum_steps == 1:
    return accumulate(zeros, (0, jax.tree.map(lambda x: x[0], micro)))[0]
  return jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))[0]


def _apply_update(
  optimizer: optax.GradientTransformation,
  state: TrainState,
  grads: Any,
  loss_sum: jax.Array,
  weight_sum: jax.Array,
  learning_rate: jax.Array,
) -> tuple[TrainState, dict]:
  """One optimizer update with the token-normalised gradients, scaled by `learning_rate`; a
  non-finite loss or gradient leaves parameters and optimizer state as they were."""
  denominator = jnp.maximum(weight_sum, 1.0)
  grads = jax.tree.map(lambda g: g / denominator, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: (learning_rate * u).astype(u.dtype), updates)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(
    step=state.step + 1,
    params=keep(params, state.params),
    opt_state=keep(opt_state, state.opt_state),
  )
  metrics = {
    'loss': loss_sum / denominator,
    'tokens': weight_sum,
    'grad_norm': grad_norm,
    'skipped': 1 - finite.astype(jnp.int32),
  }
  return new_state, metrics


def make_train_step(
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  *,
  label_smoothing: float,
  grad_accum_steps: int = 1,
  axis_name: str | None = None,
) -> Callable:
  """The per-replica train step `(state, rngs, batch, learning_rate) -> (state, metrics)`.

  `rngs` is the model's non-parameter state (its dropout streams), reseeded every step. With
  `grad_accum_steps > 1` the replica's batch is split into that many micro-batches whose summed
  gradients make one update. A non-finite loss or gradient leaves parameters and optimizer state
  unchanged (`metrics['skipped'] = 1`).
  """

  def loss_fn(params, rngs, batch, dropout_key):
    # A fresh copy of the rng Variables at this trace level, so that reseeding may mutate them.
    rngs = jax.tree.map(lambda x: x, rngs)
    model = nnx.merge(graphdef, params, rngs)
    # match_shape: a scanned stack's dropout streams hold one key per layer.
    nnx.reseed(model, dropout=dropout_key, policy='match_shape')
    logits, labels, weights = _forward(model, batch)
    loss_sum, weight_sum = label_smoothed_cross_entropy(logits, labels, weights, label_smoothing)
    return loss_sum, weight_sum

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, rngs, batch: Batch, learning_rate: jax.Array):
    replica = 0 if axis_name is None else jax.lax.axis_index(axis_name)
    base = jax.random.wrap_key_data(state.rng)
    key = jax.random.fold_in(jax.random.fold_in(base, state.step), replica)
    totals = _summed_gradients(grad_fn, state.params, rngs, batch, key, grad_accum_steps)
    grads, loss_sum, weight_sum = _psum(totals, axis_name)
    return _apply_update(optimizer, state, grads, loss_sum, weight_sum, learning_rate)

  return step


def make_eval_step(
  graphdef: nnx.GraphDef, *, label_smoothing: float = 0.0, axis_name: str | None = None
) -> Callable:
  """Per-replica eval step `(params, rngs, batch) -> sums` of NLL, correct tokens, tokens and the
  training loss (label-smoothed, `smoothed`), which makes the train/validation gap comparable."""

  def step(params, rngs, batch: Batch):
    model = nnx.merge(graphdef, params, rngs)
    model.eval()  # no dropout: the graphdef comes from the training model
    logits, labels, weights = _forward(model, batch)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    correct = (logits.argmax(-1) == labels).astype(jnp.float32)
    sums = {
      'nll': (nll * weights).sum(),
      'correct': (correct * weights).sum(),
      'tokens': weights.sum(),
      'smoothed': label_smoothed_cross_entropy(logits, labels, weights, label_smoothing)[0],
    }
    return _psum(sums, axis_name)

  return step


def create_model(config: TransformerConfig, seed: int) -> Transformer:
  """A model whose parameters come from `seed` and whose dropout streams are reseeded per step."""
  return Transformer(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def init_train_state(
  model: Transformer, optimizer: optax.GradientTransformation, seed: int
) -> tuple[nnx.GraphDef, TrainState, Any]:
  """Splits `model` into (graphdef, TrainState on the host, the non-parameter rng state)."""
  graphdef, params, rngs = nnx.split(model, nnx.Param, ...)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
    rng=jax.random.key_data(jax.random.key(seed)),
  )
  return graphdef, state, rngs
