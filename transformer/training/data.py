"""A training run's data: every split opened and checked, the tokenizer, and the batch iterators.

`prepare(config, workdir)` does all of it before the first step, so a missing file, an empty
split, a malformed line or a vocabulary the corpus cannot fill is reported in the first seconds,
with nothing written to the workdir. The training split stays on disk, read by index (see
`transformer.input_pipeline.sources`); the validation and test splits, small by nature, are read
into memory. The tokenizer is trained once, by process 0, on a bounded sample of the training
split; the other processes wait for it and load it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from transformer.input_pipeline import corpus, pipeline, sources, tokenizer as tokenizer_lib
from transformer.training import recipe, workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class RunData:
  """The splits of a run: the training source, tokenized validation data, validation and test
  text, and the training split as measured for the plan (`transformer.training.recipe`).

  `config` is the run config as asked: what the pipeline reads of it (lengths, batch size,
  packing) is never left to the data; `report` says what was read, one line each."""

  config: ml_collections.ConfigDict
  tokenizer: Any  # a SentencePiece Tokenizer, or the pretrained model's (MarianTokenizer)
  train_source: Any
  validation: pipeline.TokenizedPairs
  validation_pairs: list[tuple[str, str]]
  test_pairs: list[tuple[str, str]]
  measured: recipe.Measured
  report: list[str]

  def train_batches(self) -> pipeline.TrainBatches:
    """This process's training batches (`[batch_size / processes, max_length]`), with a position."""
    config = self.config
    return pipeline.TrainBatches(
      self.train_source,
      self.tokenizer.loader,
      batch_size=config.batch_size // jax.process_count(),
      max_length=config.max_length,
      seed=config.seed,
      pack=config.pack,
      overlong=config.overlong,
      pad_id=self.tokenizer.pad_id,
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
      workers=data_workers(config),
    )

  def eval_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's validation batches; every process yields the same number of them."""
    return pipeline.eval_batches(
      self.validation,
      batch_size=batch_size,
      max_length=self.config.max_length,
      pad_id=self.tokenizer.pad_id,
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
      max_batches=max_batches,
    )


def data_workers(config: ml_collections.ConfigDict) -> int:
  """Worker processes for the training batches: `config.data_workers`, or with None (auto) none on
  a CPU backend (the CPU runs the model; the loader needs a fraction of a core there) and half the
  host's cores, at most 16, on an accelerator."""
  if config.data_workers is not None:
    return config.data_workers
  if jax.default_backend() == 'cpu':
    return 0
  return max(1, min(16, (os.cpu_count() or 2) // 2))


def _open(config: ml_collections.ConfigDict, role: str):
  spec = sources.SplitSpec(
    config.dataset,
    config[f'{role}_split'],
    config.source_lang,
    config.target_lang,
    data_dir=config.tfds_data_dir or None,
    local_files=config.local_files.to_dict(),
    cache_dir=config.data_cache_dir,
    skip_malformed=config.skip_malformed,
  )
  source = sources.open_split(spec)
  if len(source) == 0:
    raise corpus.DataError(f'{role} split: {source.description}: no sentence pairs')
  return source


def _describe(source) -> str:
  skipped = getattr(source, 'report', {}).get('skipped', 0)
  note = (
    f', {skipped} malformed lines skipped (e.g. {source.report["reasons"][0]})' if skipped else ''
  )
  return f'{source.description}: {len(source)} pairs{note}'


def prepare(config: ml_collections.ConfigDict, workdir: str) -> RunData:
  """Opens and checks every split, loads or trains the tokenizer; see the module docstring. A
  tokenizer trained here is removed again if a check after it fails (a failed start leaves the
  workdir as it found it)."""
  train, validation, test = (_open_everywhere(config, role) for role in ('train', 'eval', 'test'))
  identity = {'train': train.identity, 'eval': validation.identity, 'test': test.identity}
  workdir_lib.check_data(identity, workdir)
  if config.init_from:
    tokenizer, trained = _pretrained_tokenizer(config, workdir), False
    vocabulary = recipe.Vocabulary(
      tokenizer.vocab_size, f"vocab {tokenizer.vocab_size} (the pretrained model's)"
    )
  else:
    vocabulary = recipe.vocabulary(config, recipe.count_words(train, config.seed))
    tokenizer, trained = _tokenizer(config, workdir, train, vocabulary.size)
    vocabulary = vocabulary.made_by(tokenizer)
  try:
    validation_pairs = sources.read_all(validation)
    measured = _measured(config, tokenizer, train, vocabulary)
    tokenized, stats = _checked_validation(config, tokenizer, validation, validation_pairs)
  except corpus.DataError:
    if trained and jax.process_index() == 0:
      os.remove(tokenizer.path)
    raise
  workdir_lib.record_data(identity, workdir)
  report = [
    f'tokenizer: {"trained" if trained else "reused"} {tokenizer.path} ({tokenizer.vocab_size} pieces)',
    f'train: {_describe(train)}',
    f'validation: {_describe(validation)}; {stats}',
    f'test: {_describe(test)}',
  ]
  test_pairs = sources.read_all(test)
  return RunData(
    config, tokenizer, train, tokenized, validation_pairs, test_pairs, measured, report
  )


def _measured(
  config: ml_collections.ConfigDict, tokenizer: Any, train: Any, vocabulary: recipe.Vocabulary
) -> recipe.Measured:
  """The training split measured for the plan; DataError where no pair would be kept."""
  try:
    return recipe.measure(train, tokenizer, config, vocabulary)
  except ValueError as e:
    raise corpus.DataError(f'train split: {train.description}: {e}') from None


def _checked_validation(
  config: ml_collections.ConfigDict,
  tokenizer: Any,
  validation: Any,
  validation_pairs: list[tuple[str, str]],
) -> tuple[pipeline.TokenizedPairs, Any]:
  """The validation pairs tokenized, and their stats; DataError where none would be kept."""
  tokenized, stats = pipeline.tokenize_pairs(
    validation_pairs, tokenizer, max_length=config.max_length, overlong=config.overlong
  )
  if not stats.kept:
    raise corpus.DataError(
      f'eval split: {validation.description}: none of its {stats.examples} pairs fits '
      f'max_length={config.max_length} (use a larger config.max_length or config.overlong=truncate)'
    )
  return tokenized, stats


def _open_everywhere(config: ml_collections.ConfigDict, role: str):
  """Process 0 opens (and, for local files, prepares) a split first; then the others open it,
  preparing their own copy if the cache is not on a filesystem they see."""
  if jax.process_index() == 0:
    source = _open(config, role)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f'{role} split ready')
  return source if jax.process_index() == 0 else _open(config, role)


def _pretrained_tokenizer(config: ml_collections.ConfigDict, workdir: str):
  """The tokenizer of the pretrained model the run starts from (for the run's language pair, a
  many-to-many model's), copied into the workdir once (process 0) so that resuming and
  translating need only the workdir."""
  from transformer.pretrained import families as pretrained, hf_bart

  directory = config.init_from
  folder = workdir_lib.tokenizer_path(workdir, pretrained=True)
  if jax.process_index() == 0 and not os.path.isdir(folder):
    temporary = f'{folder}.tmp{os.getpid()}'
    os.makedirs(temporary, exist_ok=True)
    hf_bart.copy_files(directory, temporary, pretrained.FILES)
    os.replace(temporary, folder)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices('tokenizer ready')
  return pretrained.load_tokenizer(folder, config.source_lang, config.target_lang)


def _tokenizer(
  config: ml_collections.ConfigDict, workdir: str, train, vocab_size: int
) -> tuple[tokenizer_lib.Tokenizer, bool]:
  """Process 0 loads or trains the workdir's tokenizer; the others wait for it and load it."""
  path = workdir_lib.tokenizer_path(workdir, pretrained=False)
  trained = False
  if jax.process_index() == 0:
    try:
      _, trained = tokenizer_lib.load_or_train_tokenizer(
        path,
        lambda: sample_training_sentences(train, config.vocab_max_sentences, config.seed),
        vocab_size=vocab_size,
        at_most=config.vocab_size is None,  # the recipe's size: at most what the data makes
        character_coverage=config.character_coverage,
        max_sentences=config.vocab_max_sentences,
        seed=config.seed,
      )
    except tokenizer_lib.TokenizerError as e:
      raise corpus.DataError(str(e)) from None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices('tokenizer ready')
  if not os.path.exists(path):
    raise corpus.DataError(
      f'{path}: the tokenizer process 0 wrote is not visible here; the workdir must be on a '
      'filesystem every host sees'
    )
  return tokenizer_lib.Tokenizer(path), trained


def sample_training_sentences(train, max_sentences: int, seed: int) -> Iterator[str]:
  """Both sides of a seeded sample of at most `max_sentences / 2` training pairs, read by index."""
  count = min(len(train), max(max_sentences // 2, 1))
  chosen = np.sort(np.random.default_rng(seed).choice(len(train), size=count, replace=False))
  for start in range(0, count, 4096):
    for source, target in train.__getitems__(chosen[start : start + 4096].tolist()):
      yield source
      yield target
