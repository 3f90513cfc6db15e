"""What the benchmarks (and the tests that check them) share: model configs, dtypes, synthetic
batches, the real train step built over every local device, a decoding set-up and timing.

    A  the CPU default's scale: vocab 8000, d_model 256, 4 heads, d_ff 1024, 3+3 layers, 32 × 64
    B  Transformer-base dims: vocab 32000, d_model 512, 8 heads, d_ff 2048, 6+6 layers, 16 × 64
    base, big  the paper's models on packed rows of 256 tokens (accelerators)
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from flax import nnx
import jax
import numpy as np

from transformer.input_pipeline import pipeline
from transformer.model.encoder_decoder import Transformer, TransformerConfig
from transformer.parallel import strategies as parallel_lib
from transformer.training import steps as training

# The learning rate the benchmarks' train steps take (their speed does not depend on it).
LEARNING_RATE = 1e-4
# Compute dtypes the benchmarks offer (float32 parameters either way).
DTYPES = ('float32', 'bfloat16')

_BASE = dict(
  vocab_size=32000, d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6
)
CONFIGS: dict[str, dict[str, Any]] = {
  'A': dict(
    model=dict(
      vocab_size=8000,
      d_model=256,
      num_heads=4,
      d_ff=1024,
      num_encoder_layers=3,
      num_decoder_layers=3,
    ),
    batch=32,
    length=64,
  ),
  'B': dict(model=_BASE, batch=16, length=64),
  'base': dict(model=_BASE, batch=64, length=256),
  'big': dict(
    model={**_BASE, 'd_model': 1024, 'num_heads': 16, 'd_ff': 4096}, batch=32, length=256
  ),
  # What the test suite runs on CPU.
  'tiny': dict(
    model=dict(
      vocab_size=500, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1, num_decoder_layers=1
    ),
    batch=4,
    length=32,
  ),
}


def synthetic_batch(
  rows: int,
  length: int,
  vocab: int,
  *,
  seed: int = 0,
  min_fraction: float = 0.6,
  uneven: bool = False,
) -> dict[str, np.ndarray]:
  """One example per row, lengths uniform in [min_fraction·length, length], EOS last, PAD after:
  the batch layout of `transformer.input_pipeline` (`inputs`, `targets`, their segment ids and
  positions), `[rows, length]` int32 each. `uneven`: the first half of the rows hold 1-2 tokens,
  so that the devices of a data-parallel step get very different token counts."""
  rng = np.random.default_rng(seed)
  out = {}
  for name in ('inputs', 'targets'):
    lengths = rng.integers(max(int(min_fraction * length), 1), length + 1, size=rows)
    if uneven:
      lengths[: rows // 2] = rng.integers(1, 3, size=rows // 2)
    tokens = rng.integers(3, vocab, size=(rows, length)).astype(np.int32)
    position = np.arange(length)[None, :]
    tokens[position == lengths[:, None] - 1] = 2  # EOS
    valid = position < lengths[:, None]
    out[name] = np.where(valid, tokens, 0).astype(np.int32)
    out[f'{name}_segment_ids'] = valid.astype(np.int32)
    out[f'{name}_positions'] = np.where(valid, position, 0).astype(np.int32)
  return out


def synthetic_packed_batch(
  rows: int, length: int, vocab: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """A training batch in the pipeline's layout: random-token examples of 1/16 to 1/2 of a row,
  packed into `rows` rows by the pipeline's own packer."""
  rng = np.random.default_rng(seed)
  count = rows * 8
  lengths = [rng.integers(max(length // 16, 2), max(length // 2, 3), size=count) for _ in range(2)]
  examples = [[rng.integers(3, vocab, size=n).tolist() for n in side] for side in lengths]
  tokens = pipeline.TokenizedPairs.from_lists(*examples)
  placement = pipeline.first_fit(*lengths, length)
  batch = pipeline.assemble_rows(tokens, placement, length, pad_id=0)
  return {k: v[:rows] for k, v in batch.items()}


def count_tokens(
  batch: dict[str, np.ndarray], sides: tuple[str, ...] = ('inputs', 'targets')
) -> int:
  """Non-padding tokens of the given sides of a batch."""
  return int(sum((np.asarray(batch[f'{side}_segment_ids']) > 0).sum() for side in sides))


def model_config(
  name: str, dtype: str = 'float32', attention: str = 'reference', dropout_rate: float = 0.1
) -> TransformerConfig:
  spec = CONFIGS[name]
  return TransformerConfig(
    **spec['model'],
    dropout_rate=dropout_rate,
    dtype=dtype,
    attention_implementation=attention,
    max_positions=max(256, spec['length']),
  )


def build_train_step(
  name: str,
  dtype: str = 'float32',
  attention: str = 'reference',
  devices: list | None = None,
  timings: dict | None = None,
  packed: bool = False,
):
  """The real train step of `transformer.training.steps` over `devices` (default: every local
  device), on a synthetic batch of config `name`'s shape per device (packed rows with `packed`).

  Returns (model config, parallel, device state, rngs, compiled step, device batch, host batch);
  the step takes `(state, rngs, batch, LEARNING_RATE)`. `timings` (if given) receives the seconds
  spent creating the model and optimizer state.
  """
  start = time.perf_counter()
  spec = CONFIGS[name]
  config = model_config(name, dtype, attention)
  devices = devices or jax.local_devices()
  parallel = parallel_lib.make('none' if len(devices) == 1 else 'shard_map', devices)
  optimizer, _ = training.make_optimizer(config.d_model, warmup_steps=4000)
  graphdef, state, rngs = training.init_train_state(
    training.create_model(config, seed=0), optimizer, 0
  )
  step = parallel.compile_train_step(
    training.make_train_step(graphdef, optimizer, label_smoothing=0.1, axis_name=parallel.axis_name)
  )
  make_batch = synthetic_packed_batch if packed else synthetic_batch
  host_batch = make_batch(spec['batch'] * len(devices), spec['length'], config.vocab_size)
  batch = parallel.device_batch(host_batch)
  state = jax.block_until_ready(parallel.device_state(state))
  if timings is not None:
    timings['init_seconds'] = time.perf_counter() - start
  return config, parallel, state, rngs, step, batch, host_batch


def decoding_setup(
  name: str, batch: int, length: int, dtype: str = 'float32'
) -> tuple[TransformerConfig, Transformer, np.ndarray]:
  """An untrained model of config `name` computing in `dtype` that never emits EOS, and
  `[batch, length]` random sources.

  The EOS embedding row is zeroed: its logit (0) never beats the largest random logit, so every
  decoder generates exactly the requested number of tokens.
  """
  config = model_config(name, dtype, dropout_rate=0.0)
  model = Transformer(config, rngs=nnx.Rngs(0))
  model.eval()
  model.embed.table.embedding[...] = model.embed.table.embedding[...].at[config.eos_id].set(0.0)
  src = (
    np.random.default_rng(0).integers(3, config.vocab_size, size=(batch, length)).astype(np.int32)
  )
  src[:, -1] = config.eos_id
  return config, model, src


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
  """(median seconds, every time) of `fn()` (results blocked on) after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), times
