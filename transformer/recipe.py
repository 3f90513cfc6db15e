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


@dataclasses.dataclass
class Plan:
  """What the run config left to the data, resolved; `report` says why, one line each."""

  vocab_size: int
  num_train_steps: int
  dropout_rate: float
  epochs: float
  report: list[str]


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


def kept_pairs_and_tokens(
  source, tokenizer, config: ml_collections.ConfigDict
) -> tuple[int, float]:
  """(pairs the pipeline keeps, their mean source + target tokens with EOS), estimated from a
  sample after the over-long policy: a pair the pipeline drops or truncates counts as it will be
  trained on, so that a few huge lines do not change the plan."""
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
  return round(len(source) * stats.kept / stats.examples), stats.tokens / stats.kept


def vocabulary(config: ml_collections.ConfigDict, words: float) -> tuple[int, str]:
  """(vocabulary size, the report line) for a training split of `words` words."""
  if config.vocab_size is not None:
    return config.vocab_size, f'vocab {config.vocab_size} (set)'
  size = vocab_size_for(words)
  return size, f'vocab {size} (auto: {words / 1e3:,.0f}k words in the training split)'


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


def length_and_dropout(
  config: ml_collections.ConfigDict,
  pairs: int,
  per_pair: float,
  vocab: tuple[int, str],
  step_seconds: float | None = None,
) -> Plan:
  """The plan, once the tokenizer can measure the data in tokens (and, where the budget sets
  the length of the run, once the run has measured `step_seconds`)."""
  slots = config.batch_size * config.max_length * 2 * (PACKING_EFFICIENCY if config.pack else 0.5)
  steps_per_epoch = max(pairs * per_pair / slots, 1e-9)
  steps, expected, line = _steps(config, steps_per_epoch, step_seconds)
  report = [vocab[1], line]
  epochs = expected / steps_per_epoch
  rate = config.model.dropout_rate
  if rate is None:
    rate = dropout_for(epochs)
    report.append(
      f'dropout {rate} (auto: {epochs:.1f} passes over {pairs:,} pairs of ~{per_pair:.0f} tokens)'
    )
  else:
    report.append(f'dropout {rate} (set; {epochs:.1f} passes over the data)')
  return Plan(vocab[0], steps, rate, epochs, report)


def resolve(config: ml_collections.ConfigDict, plan: Plan) -> ml_collections.ConfigDict:
  """A copy of the run config with the plan's values in place of those left to the data."""
  resolved = ml_collections.ConfigDict(config.to_dict())
  resolved.vocab_size = plan.vocab_size
  resolved.num_train_steps = plan.num_train_steps
  resolved.model.dropout_rate = plan.dropout_rate
  return resolved
