"""From raw parallel text to fixed-shape batches: reading, tokenizing, packing, sharding, batching.

Batches are dicts of `[batch, max_length]` int32 NumPy arrays:

    inputs, inputs_segment_ids, inputs_positions      source tokens (+EOS)
    targets, targets_segment_ids, targets_positions   target tokens (+EOS)

Training batches pack several examples into each row (segment ids 1, 2, ... and positions that
restart at 0 per example, as in Flax's WMT example); evaluation batches hold one example per row.
Padding is 0 with segment id 0. The shapes never change, so the train step compiles once.

The loader is grain: deterministic for a seed, each host reads a disjoint shard
(`jax.process_index()` of `jax.process_count()`), and the iterator's state can be checkpointed
(`grain.checkpoint.CheckpointSave`) to resume exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import grain
import numpy as np

from transformer.input_pipeline.corpus import DataError
from transformer.input_pipeline.tokenizer import EOS_ID, Tokenizer
from transformer.run_config import OVERLONG_POLICIES

FEATURES = ('inputs', 'targets')


@dataclasses.dataclass
class TokenizeStats:
  examples: int = 0
  kept: int = 0
  dropped_overlong: int = 0
  truncated: int = 0
  tokens: int = 0  # source + target tokens of the kept examples (with EOS)

  def __str__(self) -> str:
    return (
      f'{self.kept}/{self.examples} examples kept, {self.dropped_overlong} dropped and '
      f'{self.truncated} truncated as over-long, {self.tokens} tokens'
    )


class TokenizedPairs:
  """Random-access tokenized pairs stored as two flat arrays plus offsets (compact in memory).

  `pairs[i]` is `{'inputs': int32[n], 'targets': int32[m]}`, each ending in EOS.
  """

  def __init__(self, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]):
    assert len(inputs) == len(targets)
    self._data = {}
    for name, seqs in (('inputs', inputs), ('targets', targets)):
      lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
      offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
      np.cumsum(lengths, out=offsets[1:])
      flat = np.concatenate(seqs).astype(np.int32) if len(seqs) else np.zeros(0, np.int32)
      self._data[name] = (flat, offsets)

  def __len__(self) -> int:
    return len(self._data['inputs'][1]) - 1

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    out = {}
    for name, (flat, offsets) in self._data.items():
      out[name] = flat[offsets[index] : offsets[index + 1]]
    return out

  def lengths(self, name: str) -> np.ndarray:
    return np.diff(self._data[name][1])


def tokenize_pairs(
  pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, *, max_length: int, overlong: str = 'drop'
) -> tuple[TokenizedPairs, TokenizeStats]:
  """Tokenizes `(source, target)` pairs, appends EOS and applies the over-long policy.

  Args:
    max_length: the most tokens (EOS included) a side may have.
    overlong: 'drop' the pair, or 'truncate' each side to `max_length - 1` tokens + EOS.
  """
  if overlong not in OVERLONG_POLICIES:
    raise ValueError(f'overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}')
  stats = TokenizeStats(examples=len(pairs))
  sources = tokenizer.encode_batch([s for s, _ in pairs])
  targets = tokenizer.encode_batch([t for _, t in pairs])
  kept_inputs, kept_targets = [], []
  for src, tgt in zip(sources, targets):
    if max(len(src), len(tgt)) + 1 > max_length:
      if overlong == 'drop':
        stats.dropped_overlong += 1
        continue
      stats.truncated += 1
      src, tgt = src[: max_length - 1], tgt[: max_length - 1]
    kept_inputs.append(np.asarray(src + [EOS_ID], np.int32))
    kept_targets.append(np.asarray(tgt + [EOS_ID], np.int32))
    stats.tokens += len(src) + len(tgt) + 2
  stats.kept = len(kept_inputs)
  return TokenizedPairs(kept_inputs, kept_targets), stats


def _pad_example(
  example: dict[str, np.ndarray], max_length: int, pad_id: int = 0
) -> dict[str, np.ndarray]:
  """One example per row: pad to `max_length`, segment id 1 on real tokens, positions 0..n-1."""
  out = {}
  for name in FEATURES:
    tokens = example[name]
    n = len(tokens)
    out[name] = np.pad(tokens, (0, max_length - n), constant_values=pad_id)
    out[f'{name}_segment_ids'] = np.pad(np.ones(n, np.int32), (0, max_length - n))
    out[f'{name}_positions'] = np.pad(np.arange(n, dtype=np.int32), (0, max_length - n))
  return out


def train_dataset(
  pairs: TokenizedPairs,
  *,
  batch_size: int,
  max_length: int,
  seed: int,
  pack: bool = True,
  num_epochs: int | None = None,
  shard_index: int = 0,
  shard_count: int = 1,
) -> grain.IterDataset:
  """Shuffled (anew each epoch), sharded, packed and batched training data.

  Args:
    pairs: the tokenized training split.
    batch_size: rows per batch on this host.
    max_length: tokens per row (a packed row holds several examples).
    seed: fixes shuffling and packing order.
    pack: pack several examples per row (else one example per row).
    num_epochs: None repeats forever.
    shard_index, shard_count: this host's disjoint part of the data.
  """
  if len(pairs) == 0:
    raise ValueError('the training split has no examples left after filtering')
  ds = grain.MapDataset.source(pairs)[shard_index::shard_count]
  ds = ds.shuffle(seed=seed).repeat(num_epochs)
  iter_ds = ds.to_iter_dataset()
  if pack:
    iter_ds = grain.experimental.FirstFitPackIterDataset(
      iter_ds,
      length_struct={name: max_length for name in FEATURES},
      num_packing_bins=batch_size,
      seed=seed,
      shuffle_bins=True,
    )
  else:
    iter_ds = iter_ds.map(functools.partial(_pad_example, max_length=max_length))
  # Forever: every batch is full. A finite run keeps its last, partial batch (nothing is lost).
  return iter_ds.batch(batch_size, drop_remainder=num_epochs is None)


class TrainBatches:
  """This host's endless training batches, with a position that checkpoints save and restore."""

  def __init__(
    self,
    pairs: TokenizedPairs,
    *,
    batch_size: int,
    max_length: int,
    seed: int,
    pack: bool,
    pad_id: int,
    shard_index: int,
    shard_count: int,
  ):
    if pad_id != 0:
      raise ValueError('packing pads with 0: the training pipeline needs pad_id 0')
    self.shard_index, self.shard_count = shard_index, shard_count
    self.iterator = iter(
      train_dataset(
        pairs,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        pack=pack,
        shard_index=shard_index,
        shard_count=shard_count,
      )
    )

  def __iter__(self) -> 'TrainBatches':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self.iterator)

  def get_state(self) -> dict[str, Any]:
    return self.iterator.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self.iterator.set_state(state)

  def restore(self, saved: dict[str, Any] | None) -> None:
    """Moves to a checkpoint's saved position (`{'process_count', 'states'}`; None: stay)."""
    if not saved or not saved.get('states'):
      return
    if saved['process_count'] != self.shard_count:
      raise DataError(
        f"the checkpoint's data position was saved by {saved['process_count']} "
        f'process(es), this run has {self.shard_count}'
      )
    self.set_state(saved['states'][self.shard_index])


def eval_batches(
  pairs: TokenizedPairs,
  *,
  batch_size: int,
  max_length: int,
  pad_id: int = 0,
  shard_index: int = 0,
  shard_count: int = 1,
  max_batches: int = 0,
):
  """One example per row, in order, from this host's shard (`[shard_index::shard_count]`).

  Every host yields the same number of batches (collective eval steps must match), filling
  missing rows and batches with all-padding rows (weight 0).
  """
  per_host = -(-len(pairs) // shard_count)
  count = -(-per_host // batch_size)
  if max_batches:
    count = min(count, max_batches)
  ds = grain.MapDataset.source(pairs)[shard_index::shard_count]
  ds = ds.map(functools.partial(_pad_example, max_length=max_length, pad_id=pad_id))
  empty = {
    f'{name}{suffix}': np.full((batch_size, max_length), pad_id if not suffix else 0, np.int32)
    for name in FEATURES
    for suffix in ('', '_segment_ids', '_positions')
  }
  for index in range(count):
    rows = [ds[i] for i in range(index * batch_size, min((index + 1) * batch_size, len(ds)))]
    batch = {name: value.copy() for name, value in empty.items()}
    for row, example in enumerate(rows):
      for name, value in example.items():
        batch[name][row] = value
    yield batch
