"""SentencePiece tokenizer: a joint source/target vocabulary trained on the training split.

The special ids are `transformer.input_pipeline.special_ids` (PAD 0, BOS 1, EOS 2, UNK 3), which are also
`TransformerConfig`'s defaults. The trained model is written once to the workdir and reused on
resume and by `translate`. No TensorFlow or grain here: the `sentencepiece` package only.
"""

from __future__ import annotations

import functools
import io
import os
import random
import re
from typing import Callable, Iterable, Sequence

import sentencepiece as spm

from transformer.input_pipeline.special_ids import BOS_ID, EOS_ID, PAD_ID, UNK_ID


class TokenizerError(ValueError):
  """A tokenizer cannot be trained on this data or loaded from this file. `most`: the largest
  vocabulary SentencePiece can make from the data, where the asked one is larger."""

  def __init__(self, message: str, most: int | None = None):
    super().__init__(message)
    self.most = most


class Tokenizer:
  """Text <-> token ids with a trained SentencePiece model."""

  def __init__(self, model_path: str):
    if not os.path.exists(model_path):
      raise FileNotFoundError(
        f'{model_path}: no SentencePiece model (train one with train_tokenizer)'
      )
    self.path = model_path
    self.processor = spm.SentencePieceProcessor(model_file=model_path)
    ids = (
      self.processor.pad_id(),
      self.processor.bos_id(),
      self.processor.eos_id(),
      self.processor.unk_id(),
    )
    if ids != (PAD_ID, BOS_ID, EOS_ID, UNK_ID):
      raise ValueError(
        f'{model_path}: special ids (pad, bos, eos, unk) = {ids}, expected '
        f'{(PAD_ID, BOS_ID, EOS_ID, UNK_ID)}; this model was not made by train_tokenizer'
      )

  @property
  def vocab_size(self) -> int:
    return self.processor.vocab_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def loader(self) -> Callable[[], 'Tokenizer']:
    """A picklable function that loads this tokenizer again (in another process)."""
    return functools.partial(Tokenizer, self.path)

  @property
  def special_ids(self) -> dict[str, int]:
    """The ids a `TransformerConfig` for this vocabulary takes: pad_id, bos_id, eos_id."""
    return {'pad_id': PAD_ID, 'bos_id': BOS_ID, 'eos_id': EOS_ID}

  def encode(self, text: str, side: str = 'source') -> list[int]:
    """Ids of `text`, without BOS/EOS (one vocabulary: `side` changes nothing)."""
    return self.processor.encode(text)

  def end_ids(self, side: str = 'source') -> list[int]:
    """The ids that follow `encode(text, side)` in an example: EOS."""
    return [EOS_ID]

  def encode_batch(self, texts: Sequence[str], side: str = 'source') -> list[list[int]]:
    """Ids of each text, on this thread (the input pipeline parallelises with processes)."""
    return self.processor.encode(list(texts), num_threads=1)

  def pieces(self, ids: Iterable[int], side: str = 'target') -> list[str]:
    """The SentencePiece piece of each id (one vocabulary: `side` changes nothing)."""
    return [self.processor.id_to_piece(int(i)) for i in ids]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` up to the first EOS; PAD and BOS are ignored."""
    kept = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i not in (PAD_ID, BOS_ID):
        kept.append(i)
    return self.processor.decode(kept)

  def normalize(self, text: str) -> str:
    """The text as the tokenizer sees it (NFKC, whitespace collapsed): what decode(encode()) returns."""
    # SentencePiece marks spaces (and the dummy prefix) with U+2581 in its normalised form.
    return self.processor.normalize(text).replace('\u2581', ' ').strip()


def sample_sentences(sentences: Iterable[str], size: int, seed: int) -> list[str]:
  """A seeded uniform sample of at most `size` sentences, in one pass with bounded memory
  (reservoir sampling); all of them when there are fewer."""
  sample: list[str] = []
  rng = random.Random(seed)
  for n, sentence in enumerate(sentences):
    if len(sample) < size:
      sample.append(sentence)
    else:
      j = rng.randint(0, n)
      if j < size:
        sample[j] = sentence
  return sample


def train_tokenizer(
  model_path: str,
  sentences: Iterable[str],
  *,
  vocab_size: int,
  character_coverage: float = 1.0,
  max_sentences: int = 1_000_000,
  seed: int = 0,
) -> Tokenizer:
  """Trains a unigram SentencePiece model on `sentences` and writes it to `model_path`.

  At most `max_sentences` sentences are used (a seeded uniform sample when there are more), so
  the vocabulary of a large corpus is trained in bounded time and memory.
  """
  sample = sample_sentences(sentences, max_sentences, seed)
  if not sample:
    raise TokenizerError('cannot train a tokenizer on an empty training split')
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sample),
      model_writer=model,
      vocab_size=vocab_size,
      character_coverage=character_coverage,
      model_type='unigram',
      pad_id=PAD_ID,
      bos_id=BOS_ID,
      eos_id=EOS_ID,
      unk_id=UNK_ID,
      input_sentence_size=max_sentences,
      shuffle_input_sentence=True,
      seed_sentencepiece_size=1_000_000,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
    )
  except RuntimeError as e:
    too_high = re.search(
      r'Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)', str(e)
    )
    if too_high:
      raise TokenizerError(
        f'config.vocab_size={too_high[1]} is more than SentencePiece can make from '
        f'the training data (at most {too_high[2]}): set a smaller vocab_size',
        most=int(too_high[2]),
      ) from None
    raise
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  temporary = model_path + '.tmp'
  with open(temporary, 'wb') as f:  # write then rename: a crash never leaves half a model
    f.write(model.getvalue())
  os.replace(temporary, model_path)
  return Tokenizer(model_path)


def load_or_train_tokenizer(
  model_path: str, sentences_fn, *, vocab_size: int, at_most: bool = False, **kwargs
) -> tuple[Tokenizer, bool]:
  """Loads the tokenizer at `model_path` if it exists (checking its size), else trains it.

  `at_most`: `vocab_size` is a wish (the recipe's), not a requirement: where the data cannot make
  that many pieces, the most it can make are trained, and a saved tokenizer of at most
  `vocab_size` pieces is accepted.

  Returns:
    The tokenizer and whether it was trained now.
  """
  if os.path.exists(model_path):
    tokenizer = Tokenizer(model_path)
    if tokenizer.vocab_size != vocab_size and not (at_most and tokenizer.vocab_size < vocab_size):
      raise TokenizerError(
        f'{model_path} has a vocabulary of {tokenizer.vocab_size}, but the config asks '
        f'for {vocab_size}: use another workdir or the same vocab_size'
      )
    return tokenizer, False
  try:
    return train_tokenizer(model_path, sentences_fn(), vocab_size=vocab_size, **kwargs), True
  except TokenizerError as e:
    if not (at_most and e.most):
      raise
    most = e.most
  return train_tokenizer(model_path, sentences_fn(), vocab_size=most, **kwargs), True
