"""Small text corpora for input-pipeline tests: an in-memory random-access source and made-up
sentence pairs."""

import numpy as np

WORDS = (
  'the cat dog sat on a mat while le chat chien est sur tapis quick brown fox jumps over '
  'lazy it is and of to in house maison rouge red blue bleu'
).split()


class ListSource:
  """The random-access source interface (`len`, `[i]`, `__getitems__`) over a list of pairs."""

  def __init__(self, pairs):
    self.pairs = list(pairs)
    self.description = f'{len(self.pairs)} test pairs'

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, index):
    return self.pairs[index]

  def __getitems__(self, indices):
    return [self.pairs[i] for i in indices]


def pairs(
  count: int, seed: int = 0, min_words: int = 1, max_words: int = 12
) -> list[tuple[str, str]]:
  """`count` distinct made-up (source, target) sentence pairs."""
  rng = np.random.default_rng(seed)
  made = []
  for i in range(count):
    words = lambda: ' '.join(rng.choice(WORDS, size=rng.integers(min_words, max_words + 1)))
    made.append((f'{words()} {i}', words()))  # the number makes every source distinct
  return made
