"""Defaults that depend on the data: vocabulary size, length of training and dropout.

Left to the data in the run config (`vocab_size=None`, `model.dropout_rate=None`), they are resolved
before the model exists, from the training split's size (measured on a seeded sample of at most
`SAMPLE` pairs read by index, so the plan is the same on every resume):

    vocabulary  6.4·√W SentencePiece pieces, rounded to 1,000, between 8,000 and 32,000, where W
                is the number of words in the training split (source + target): the paper's
                ~32k shared pieces at WMT scale, and 8,000 below ~1.6M words, where a smaller
                vocabulary costs BLEU on every corpus of docs/results.md (over-fitting a small
                corpus is dropout's to prevent, below).
    steps       `num_train_steps`, but at most `max_epochs` passes over the data (None = no cap);
                `num_train_steps=None`: until `max_train_minutes` ends, within `max_epochs`
                passes (the run measures its step time first, `step_seconds`, to know how many
                passes the budget allows).
    dropout     by E, the passes over the data the run will make: 0 for E <= 8 (the model is
                still fitting the data, and dropout only slows it), 0.3 beyond (it over-fits).

`configs/base.py` and `big.py` set the paper's values, so nothing there is resolved.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np

SAMPLE = 20_000
_NO_DROPOUT_UP_TO_EPOCHS = 8.0
PACKING_EFFICIENCY = 0.9  # share of a packed row's slots that hold tokens (measured: 0.93-0.95)


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """The vocabulary size of a run and the report line that says why."""

  size: int
  reason: str

  def made_by(self, tokenizer) -> Vocabulary:
    """This vocabulary as `tokenizer` has it: itself, or the most SentencePiece could make
    from a training split too small for it."""
    if tokenizer.vocab_size == self.size:
      return self
    return Vocabulary(
      tokenizer.vocab_size,
      f'vocab {tokenizer.vocab_size} (auto: the most SentencePiece makes from the training '
      f'split; the rule asks {self.size})',
    )


@dataclasses.dataclass(frozen=True)
class Measured:
  """What the plan is made from: the training pairs the pipeline keeps, their mean source +
  target tokens (EOS included), and the vocabulary they are tokenized with."""

  pairs: int
  tokens_per_pair: float
  vocabulary: Vocabulary


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the run config left to the data, resolved; `report` says why, one line each."""

  vocab_size: int
  num_train_steps: int
  dropout_rate: float
  epochs: float
  report: list[str]

  def resolve(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of the run config with the plan's values in place of those left to the data."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.vocab_size = self.vocab_size
    resolved.num_train_steps = self.num_train_steps
    resolved.model.dropout_rate = self.dropout_rate
    return resolved


def vocab_size_for(words: float) -> int:
  """6.4·√words, rounded to 1,000, between 8,000 and 32,000."""
  return int(min(max(round(6.4 * math.sqrt(max(words, 0.0)), -3), 8000), 32000))


def dropout_for(epochs: float) -> float:
  return 0.0 if epochs <= _NO_DROPOUT_UP_TO_EPOCHS else 0.3


def sample_indices(count: int, seed: int, size: int = SAMPLE) -> list[int]:
  """A seeded, sorted sample of at most `size` of `count` indices."""
  if count <= size:
    return list(range(count))
  return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False)).tolist()


def count_words(source, seed: int) -> float:
  """Estimated words (whitespace-separated, source + target) of a split, from a sample."""
  indices = sample_indices(len(source), seed)
  pairs = source.__getitems__(indices)
  per_pair = sum(len(s.split()) + len(t.split()) for s, t in pairs) / max(len(pairs), 1)
  return per_pair * len(source)


def measure(
  source, tokenizer, config: ml_collections.ConfigDict, vocabulary: Vocabulary
) -> Measured:
  """The training split as the pipeline will feed it, estimated from a sample after the
  over-long policy: a pair the pipeline drops or truncates counts as it will be trained on, so
  that a few huge lines do not change the plan."""
  from transformer.input_pipeline import pipeline

  pairs = source.__getitems__(sample_indices(len(source), config.seed, size=min(SAMPLE, 5000)))
  _, stats = pipeline.tokenize_pairs(
    pairs, tokenizer, max_length=config.max_length, overlong=config.overlong
  )
  if not stats.kept:
    raise ValueError(
      f'no training pair of a sample of {stats.examples} fits max_length={config.max_length} '
      '(use a larger config.max_length or config.overlong=truncate)'
    )
  pairs = round(len(source) * stats.kept / stats.examples)
  return Measured(pairs, stats.tokens / stats.kept, vocabulary)


def vocabulary(config: ml_collections.ConfigDict, words: float) -> Vocabulary:
  """The vocabulary of a training split of `words` words."""
  if config.vocab_size is not None:
    return Vocabulary(config.vocab_size, f'vocab {config.vocab_size} (set)')
  size = vocab_size_for(words)
  return Vocabulary(size, f'vocab {size} (auto: {words / 1e3:,.0f}k words in the training split)')


def needs_step_time(config: ml_collections.ConfigDict) -> bool:
  """Whether the plan waits for the measured step time: the budget sets the length of the run
  and the dropout is left to the passes it makes."""
  return config.num_train_steps is None and config.model.dropout_rate is None


def _steps(
  config: ml_collections.ConfigDict, steps_per_epoch: float, step_seconds: float | None
) -> tuple[int, float, str]:
  """(planned steps, the steps the run expects to make, the report line)."""
  cap = None
  if config.max_epochs is not None:
    cap = max(int(math.ceil(config.max_epochs * steps_per_epoch)), 1)
  if config.num_train_steps is None:  # the budget decides, within the cap (run_config checks both)
    line = (
      f'steps: until the {config.max_train_minutes:g}-minute budget ends, '
      f'at most {cap:,} ({config.max_epochs} passes)'
    )
    if not step_seconds:
      return cap, cap, line
    expected = min(cap, int(config.max_train_minutes * 60 / step_seconds))
    return cap, expected, f'{line}; about {expected:,} at {step_seconds:.3f} s a step (measured)'
  if cap is not None and config.num_train_steps > cap:
    return cap, cap, f'steps {cap} (auto: at most {config.max_epochs} passes over the data)'
  return config.num_train_steps, config.num_train_steps, f'steps {config.num_train_steps} (set)'


def plan(
  config: ml_collections.ConfigDict, measured: Measured, step_seconds: float | None = None
) -> Plan:
  """The plan, once the tokenizer has measured the data in tokens (and, where the budget sets
  the length of the run, `needs_step_time`, once the run has measured `step_seconds`)."""
  pairs, per_pair = measured.pairs, measured.tokens_per_pair
  slots = config.batch_size * config.max_length * 2 * (PACKING_EFFICIENCY if config.pack else 0.5)
  steps_per_epoch = max(pairs * per_pair / slots, 1e-9)
  steps, expected, line = _steps(config, steps_per_epoch, step_seconds)
  report = [measured.vocabulary.reason, line]
  epochs = expected / steps_per_epoch
  rate = config.model.dropout_rate
  if rate is None:
    rate = dropout_for(epochs)
    report.append(
      f'dropout {rate} (auto: {epochs:.1f} passes over {pairs:,} pairs of ~{per_pair:.0f} tokens)'
    )
  else:
    report.append(f'dropout {rate} (set; {epochs:.1f} passes over the data)')
  return Plan(measured.vocabulary.size, steps, rate, epochs, report)


def probe(config: ml_collections.ConfigDict, measured: Measured) -> ml_collections.ConfigDict:
  """The config whose step a run times before its plan (`needs_step_time`): the measured
  vocabulary, no dropout, one step (the schedule's length does not change a step's time)."""
  return Plan(measured.vocabulary.size, 1, 0.0, 0.0, []).resolve(config)
