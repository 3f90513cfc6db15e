"""From indexed text pairs to fixed-shape batches: shard, shuffle, tokenize, pack, batch.

Batches are dicts of `[batch, max_length]` int32 NumPy arrays:

    inputs, inputs_segment_ids, inputs_positions      source tokens (+EOS)
    targets, targets_segment_ids, targets_positions   target tokens (+EOS)

Training rows pack several examples (segment ids 1, 2, ... and positions that restart at 0 per
example, as in Flax's WMT example); evaluation rows hold one example each. Padding is the
tokenizer's pad id with segment id 0. The shapes never change, so the train step compiles once.

Training data flows per process as a grain `MapDataset`: the process's records (by index,
`[process::processes]`), shuffled anew each epoch, cut into chunks of `CHUNK_PAIRS` records; each
chunk is read, tokenized, filtered for length and packed into rows by one call (in grain worker
processes when `workers > 0`), so the cost per example does not depend on how many examples a
row holds. `TrainBatches` hands the rows out `batch_size` at a time; its position is (chunk, row),
so a restore is exact, and a restore with another process count resumes at the same fraction of
the epoch.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from transformer.input_pipeline.corpus import DataError
from transformer.input_pipeline.special_ids import end_ids
from transformer.input_pipeline.tokenizer import Tokenizer

FEATURES = ('inputs', 'targets')
SIDES = {'inputs': 'source', 'targets': 'target'}  # feature -> tokenizer side
FIELDS = tuple(
  f'{name}{suffix}' for name in FEATURES for suffix in ('', '_segment_ids', '_positions')
)
CHUNK_PAIRS = 2048  # records tokenized and packed together
OVERLONG_POLICIES = ('drop', 'truncate')  # what happens to an example longer than max_length


@dataclasses.dataclass
class TokenizeStats:
  """What tokenizing did: examples seen and kept, over-long ones dropped or truncated."""

  examples: int = 0
  kept: int = 0
  dropped_overlong: int = 0
  truncated: int = 0
  tokens: int = 0  # source + target tokens of the kept examples (with EOS)

  def add(self, other: 'TokenizeStats') -> None:
    for field in dataclasses.fields(self):
      setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

  def __str__(self) -> str:
    return (
      f'{self.kept}/{self.examples} examples kept, {self.dropped_overlong} dropped and '
      f'{self.truncated} truncated as over-long, {self.tokens} tokens'
    )


class TokenizedPairs:
  """Tokenized pairs stored as two flat arrays plus offsets (compact, random access).

  `pairs[i]` is `{'inputs': int32[n], 'targets': int32[m]}`, each ending in EOS.
  """

  def __init__(self, flat: dict[str, np.ndarray], offsets: dict[str, np.ndarray]):
    self.flat, self.offsets = flat, offsets

  @classmethod
  def from_lists(
    cls,
    inputs: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    ends: dict[str, Sequence[int]] | None = None,
  ) -> 'TokenizedPairs':
    """From token lists per example; `ends` (feature name -> ids, e.g. `{'inputs': [EOS],
    'targets': [EOS]}`) are added at the end of each example of that feature."""
    flat, offsets = {}, {}
    for name, seqs in (('inputs', inputs), ('targets', targets)):
      end = list((ends or {}).get(name, ()))
      lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs)) + len(end)
      pieces = (
        itertools.chain.from_iterable(itertools.chain(s, end) for s in seqs)
        if end
        else (itertools.chain.from_iterable(seqs))
      )
      flat[name] = np.fromiter(pieces, dtype=np.int32, count=int(lengths.sum()))
      offsets[name] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return cls(flat, offsets)

  def __len__(self) -> int:
    return len(self.offsets['inputs']) - 1

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {
      name: self.flat[name][self.offsets[name][index] : self.offsets[name][index + 1]]
      for name in FEATURES
    }

  def lengths(self, name: str) -> np.ndarray:
    return np.diff(self.offsets[name])


def tokenize_pairs(
  pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, *, max_length: int, overlong: str = 'drop'
) -> tuple[TokenizedPairs, TokenizeStats]:
  """Tokenizes `(source, target)` pairs, appends each side's end (`tokenizer.end_ids`: EOS, or
  e.g. `</s> [language]` on a legacy NLLB source) and applies the over-long policy.

  Args:
    max_length: the most tokens (the end included) a side may have.
    overlong: 'drop' the pair, or 'truncate' each side to `max_length` tokens with its end.
  """
  if overlong not in OVERLONG_POLICIES:
    raise ValueError(f'overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}')
  eos = tokenizer.special_ids['eos_id']
  ends = {name: end_ids(tokenizer, side, eos) for name, side in SIDES.items()}
  sources = tokenizer.encode_batch([s for s, _ in pairs], side='source')
  targets = tokenizer.encode_batch([t for _, t in pairs], side='target')
  room = {name: max_length - len(end) for name, end in ends.items()}
  over = np.fromiter(
    (len(s) > room['inputs'] or len(t) > room['targets'] for s, t in zip(sources, targets)),
    bool,
    len(pairs),
  )
  stats = TokenizeStats(examples=len(pairs))
  if overlong == 'drop':
    stats.dropped_overlong = int(over.sum())
    keep = np.flatnonzero(~over)
    sources, targets = [sources[i] for i in keep], [targets[i] for i in keep]
  else:
    stats.truncated = int(over.sum())
    for i in np.flatnonzero(over):
      sources[i], targets[i] = sources[i][: room['inputs']], targets[i][: room['targets']]
  tokenized = TokenizedPairs.from_lists(sources, targets, ends)
  stats.kept = len(tokenized)
  stats.tokens = len(tokenized.flat['inputs']) + len(tokenized.flat['targets'])
  return tokenized, stats


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where each example of a batch goes: its `row` `[examples]`, its start offset in the row per
  side (`start['inputs']`, `start['targets']`, `[examples]`), and the number of `rows`."""

  row: np.ndarray
  start: dict[str, np.ndarray]
  rows: int

  @classmethod
  def one_per_row(cls, count: int, rows: int | None = None) -> Placement:
    """Example i alone at the start of row i, in `rows` rows (default: as many as examples;
    more leaves padding rows)."""
    start = {name: np.zeros(count, np.int64) for name in FEATURES}
    return cls(np.arange(count), start, count if rows is None else rows)


def first_fit(source_lengths: np.ndarray, target_lengths: np.ndarray, max_length: int) -> Placement:
  """Places examples in rows of `max_length` tokens per side, longest first, each in the first
  row with room on both sides (first-fit decreasing)."""
  count = len(source_lengths)
  used = {'inputs': np.zeros(count, np.int64), 'targets': np.zeros(count, np.int64)}
  row = np.zeros(count, np.int64)
  start = {'inputs': np.zeros(count, np.int64), 'targets': np.zeros(count, np.int64)}
  rows = 0
  for i in np.argsort(-np.maximum(source_lengths, target_lengths), kind='stable'):
    s, t = source_lengths[i], target_lengths[i]
    fits = (used['inputs'][:rows] + s <= max_length) & (used['targets'][:rows] + t <= max_length)
    j = int(fits.argmax()) if rows and fits.any() else rows
    rows = max(rows, j + 1)
    row[i], start['inputs'][i], start['targets'][i] = j, used['inputs'][j], used['targets'][j]
    used['inputs'][j] += s
    used['targets'][j] += t
  return Placement(row, start, rows)


def assemble_rows(
  pairs: TokenizedPairs, placement: Placement, max_length: int, pad_id: int
) -> dict[str, np.ndarray]:
  """Writes each example at its placement into `[rows, max_length]` arrays: tokens, segment
  ids (1, 2, ... within a row, in order of position) and positions (0.. per example)."""
  row, start, rows = placement.row, placement.start, placement.rows
  order = np.lexsort((start['inputs'], row))  # examples by row, then by place in the row
  first_of_row = np.searchsorted(row[order], row[order], side='left')
  segment = np.empty(len(row), np.int32)
  segment[order] = np.arange(len(row)) - first_of_row + 1
  batch = {}
  for name in FEATURES:
    lengths = pairs.lengths(name)
    example = np.repeat(np.arange(len(row)), lengths)
    within = np.arange(len(pairs.flat[name])) - np.repeat(pairs.offsets[name][:-1], lengths)
    r, c = row[example], start[name][example] + within
    batch[name] = np.full((rows, max_length), pad_id, np.int32)
    batch[name][r, c] = pairs.flat[name]
    batch[f'{name}_segment_ids'] = np.zeros((rows, max_length), np.int32)
    batch[f'{name}_segment_ids'][r, c] = segment[example]
    batch[f'{name}_positions'] = np.zeros((rows, max_length), np.int32)
    batch[f'{name}_positions'][r, c] = within
  return batch


class ChunkBuilder:
  """One chunk of records -> packed rows: read, tokenize, drop/truncate, pack, shuffle the rows.

  Runs in grain's worker processes, so it holds plain values and a picklable `load_tokenizer`
  (e.g. `functools.partial(Tokenizer, path)`), and loads the tokenizer where it runs.
  """

  def __init__(
    self,
    source: Any,
    load_tokenizer: Callable[[], Tokenizer],
    *,
    max_length: int,
    overlong: str,
    pack: bool,
    pad_id: int,
    seed: int,
  ):
    self.source, self.load_tokenizer = source, load_tokenizer
    self.max_length, self.overlong, self.pack, self.pad_id, self.seed = (
      max_length,
      overlong,
      pack,
      pad_id,
      seed,
    )
    self._tokenizer = None

  def __call__(self, chunk: int, indices: np.ndarray) -> dict[str, Any]:
    if self._tokenizer is None:
      self._tokenizer = self.load_tokenizer()
    pairs = self.source.__getitems__([int(i) for i in indices])
    tokenized, stats = tokenize_pairs(
      pairs, self._tokenizer, max_length=self.max_length, overlong=self.overlong
    )
    lengths = tokenized.lengths('inputs'), tokenized.lengths('targets')
    if self.pack:
      placement = first_fit(*lengths, self.max_length)
    else:
      placement = Placement.one_per_row(len(tokenized))
    batch = assemble_rows(tokenized, placement, self.max_length, self.pad_id)
    permutation = np.random.default_rng([self.seed, chunk]).permutation(placement.rows)
    return {
      'rows': {k: v[permutation] for k, v in batch.items()},
      'stats': dataclasses.asdict(stats),
    }


class TrainBatches:
  """This process's endless training batches, `[batch_size, max_length]` each.

  Position: the chunk whose rows are being handed out and the next row in it. `get_state` and
  `set_state` move it exactly; `restore` also accepts the positions another number of processes
  saved (it resumes at the same fraction of the epoch, the least advanced process's).
  """

  def __init__(
    self,
    source: Any,
    load_tokenizer: Callable[[], Tokenizer],
    *,
    batch_size: int,
    max_length: int,
    seed: int,
    pack: bool = True,
    overlong: str = 'drop',
    pad_id: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    workers: int = 0,
    chunk_pairs: int = CHUNK_PAIRS,
  ):
    import grain

    self.batch_size, self.workers, self.chunk_pairs = batch_size, workers, chunk_pairs
    self.shard_index, self.shard_count = shard_index, shard_count
    indices = grain.MapDataset.range(len(source))[shard_index::shard_count]
    self.shard_length = len(indices)
    if self.shard_length == 0:
      raise DataError(f'process {shard_index} of {shard_count} has no training records')
    builder = ChunkBuilder(
      source,
      load_tokenizer,
      max_length=max_length,
      overlong=overlong,
      pack=pack,
      pad_id=pad_id,
      seed=seed,
    )
    self.chunks = indices.shuffle(seed=seed).repeat().batch(chunk_pairs).map_with_index(builder)
    self.stats = TokenizeStats()
    self.chunk, self.row = 0, 0
    self._rows: dict[str, np.ndarray] | None = None  # the current chunk's rows
    self._iterator: Iterator | None = None

  def _start(self) -> None:
    import grain

    dataset = self.chunks[self.chunk :].to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    )
    if self.workers:
      from absl import flags

      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; programs that parse none
        flags.FLAGS.mark_as_parsed()  # (notebooks, pytest, argparse scripts) use the defaults
      dataset = dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=2)
      )
    self._iterator = iter(dataset)
    self._rows = None

  def _next_chunk(self) -> None:
    if self._rows is not None:
      self.chunk, self.row = self.chunk + 1, 0
    empty = 0
    while True:
      produced = next(self._iterator)
      self.stats.add(TokenizeStats(**produced['stats']))
      if len(produced['rows']['inputs']):
        self._rows = produced['rows']
        return
      empty += 1  # every record of the chunk was dropped as over-long
      if empty * self.chunk_pairs > 2 * self.shard_length:
        raise DataError(
          'no training pair fits max_length (use a larger config.max_length or config.overlong=truncate)'
        )
      self.chunk, self.row = self.chunk + 1, 0

  def __iter__(self) -> 'TrainBatches':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      self._start()
    parts, missing = [], self.batch_size
    while missing:
      if self._rows is None or self.row >= len(self._rows['inputs']):
        self._next_chunk()
      take = min(missing, len(self._rows['inputs']) - self.row)
      parts.append({k: v[self.row : self.row + take] for k, v in self._rows.items()})
      self.row += take
      missing -= take
    return {
      k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in FIELDS
    }

  def get_state(self) -> dict[str, Any]:
    return {
      'chunk': self.chunk,
      'row': self.row,
      'shard_count': self.shard_count,
      'shard_length': self.shard_length,
      'chunk_pairs': self.chunk_pairs,
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Moves to an exact position saved by this process (with the same process count)."""
    self.chunk, self.row = int(state['chunk']), int(state['row'])
    self._iterator, self._rows = None, None  # restarted from `chunk` by the next batch

  def restore(self, saved: dict[str, Any] | None) -> str | None:
    """Moves to a checkpoint's saved position (`{'process_count', 'states'}`); returns a note
    when the process count changed and the position is the nearest one, not the exact one."""
    if not saved or not saved.get('states'):
      return None
    states = saved['states']
    if (
      saved['process_count'] == self.shard_count
      and states[0].get('chunk_pairs') == self.chunk_pairs
    ):
      self.set_state(states[self.shard_index])
      return None
    epochs = min(s['chunk'] * s['chunk_pairs'] / s['shard_length'] for s in states.values())
    self.set_state({'chunk': int(epochs * self.shard_length) // self.chunk_pairs, 'row': 0})
    return (
      f'data position: the checkpoint was written by {saved["process_count"]} process(es), '
      f'this run has {self.shard_count}; resuming {epochs:.3f} epochs into the data'
    )


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
  mine = np.arange(shard_index, len(pairs), shard_count)
  per_host = -(-len(pairs) // shard_count)  # the most any host holds
  count = -(-per_host // batch_size)
  if max_batches:
    count = min(count, max_batches)
  for index in range(count):
    chosen = mine[index * batch_size : (index + 1) * batch_size]
    part = TokenizedPairs.from_lists(
      [pairs[i]['inputs'] for i in chosen], [pairs[i]['targets'] for i in chosen]
    )
    yield assemble_rows(part, Placement.one_per_row(len(chosen), batch_size), max_length, pad_id)
