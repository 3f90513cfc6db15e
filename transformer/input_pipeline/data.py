"""A training run's data: every split read and checked, the tokenizer, and the batch iterators.

`prepare(config, workdir)` does all of it before the first step, so a missing file, an empty
split, a malformed line or a vocabulary the corpus cannot fill is reported in the first seconds,
with nothing written to the workdir. The tokenizer is trained once, by process 0; the other
processes wait for it and load it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import jax
import ml_collections
import numpy as np

from transformer import workdir as workdir_lib
from transformer.input_pipeline import corpus, datasets, pipeline
from transformer.input_pipeline import tokenizer as tokenizer_lib


@dataclasses.dataclass
class RunData:
  """The splits of a run: tokenized training and validation data, validation and test text."""

  config: ml_collections.ConfigDict
  tokenizer: tokenizer_lib.Tokenizer
  train: pipeline.TokenizedPairs
  validation: pipeline.TokenizedPairs
  validation_pairs: list[tuple[str, str]]
  test_pairs: list[tuple[str, str]]
  report: list[str]

  def train_batches(self) -> pipeline.TrainBatches:
    """This host's training batches (`[batch_size / hosts, max_length]`), with a position."""
    config = self.config
    return pipeline.TrainBatches(
      self.train,
      batch_size=config.batch_size // jax.process_count(),
      max_length=config.max_length,
      seed=config.seed,
      pack=config.pack,
      pad_id=self.tokenizer.pad_id,
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
    )

  def eval_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This host's validation batches; every host yields the same number of them."""
    return pipeline.eval_batches(
      self.validation,
      batch_size=batch_size,
      max_length=self.config.max_length,
      pad_id=self.tokenizer.pad_id,
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
      max_batches=max_batches,
    )


def _read(config: ml_collections.ConfigDict, split: str) -> tuple[list[tuple[str, str]], str]:
  pairs, report = datasets.read_split(
    config.dataset,
    config[f'{split}_split'],
    config.source_lang,
    config.target_lang,
    data_dir=config.tfds_data_dir or None,
    local_files=config.local_files.to_dict(),
    skip_malformed=config.skip_malformed,
  )
  if not pairs:
    raise corpus.DataError(f'{split} split: {report}: no sentence pairs')
  return pairs, report


def prepare(config: ml_collections.ConfigDict, workdir: str) -> RunData:
  """Reads and checks every split, loads or trains the tokenizer, tokenizes; see the module docstring."""
  splits = {split: _read(config, split) for split in ('train', 'eval', 'test')}
  (train_pairs, train_report), (eval_pairs, eval_report), (test_pairs, test_report) = (
    splits.values()
  )
  tokenizer, trained = _tokenizer(config, workdir, train_pairs)
  tokenize = lambda pairs: pipeline.tokenize_pairs(
    pairs, tokenizer, max_length=config.max_length, overlong=config.overlong
  )
  train, train_stats = tokenize(train_pairs)
  if len(train) == 0:
    raise corpus.DataError(
      f'train split: {train_report}: no pair fits max_length={config.max_length} '
      '(use a larger config.max_length or config.overlong=truncate)'
    )
  validation, eval_stats = tokenize(eval_pairs)
  report = [
    f'tokenizer: {"trained" if trained else "reused"} {tokenizer.path} ({tokenizer.vocab_size} pieces)',
    f'train: {train_report}; {train_stats}',
    f'validation: {eval_report}; {eval_stats}',
    f'test: {test_report}',
  ]
  return RunData(config, tokenizer, train, validation, eval_pairs, test_pairs, report)


def _tokenizer(
  config: ml_collections.ConfigDict, workdir: str, train_pairs: list[tuple[str, str]]
) -> tuple[tokenizer_lib.Tokenizer, bool]:
  """Process 0 loads or trains the workdir's tokenizer; the others wait for it and load it."""
  path = workdir_lib.tokenizer_path(workdir)
  trained = False
  if jax.process_index() == 0:
    try:
      _, trained = tokenizer_lib.load_or_train_tokenizer(
        path,
        lambda: (text for pair in train_pairs for text in pair),
        vocab_size=config.vocab_size,
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
      f'{path}: the tokenizer process 0 wrote is not visible here; the '
      'workdir must be on a filesystem every host sees'
    )
  return tokenizer_lib.Tokenizer(path), trained
