"""Alignments from cross-attention: on a model trained to reverse its input, each target token
aligns to the mirrored source token; pieces map to words; the Pharaoh format."""

import numpy as np
import pytest

from tests.helpers import configs, trained_model
from transformer import translate as command
from transformer.decoding import alignment, search, translation

EOS = 2
LENGTHS = range(4, 9)


def _reversal_pairs(count: int, seed: int) -> list[tuple[list[int], list[int]]]:
  """Sequences of 4–8 distinct tokens (ids 3–22) and the same tokens reversed, each + EOS."""
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(count):
    seq = [int(t) for t in rng.choice(np.arange(3, 23), rng.integers(4, 9), replace=False)]
    pairs.append((seq + [EOS], seq[::-1] + [EOS]))
  return pairs


@pytest.fixture(scope='module')
def reverser():
  config = configs.tiny_config(
    vocab_size=24, d_model=128, num_heads=4, d_ff=256, num_encoder_layers=1,
    num_decoder_layers=1, max_positions=32, norm_position='pre',
  )  # fmt: skip
  pairs = _reversal_pairs(4000, seed=0)
  return trained_model.train_on_pairs(
    config, pairs, steps=400, length=16, learning_rate_scale=1.0, warmup_steps=200
  )


class _WordPerToken:
  """A tokenizer stand-in: token i is the word 'w<i>' (one piece each)."""

  def pieces(self, ids, side='target'):
    return [f'\u2581w{i}' for i in ids]

  def encode(self, text, side='source'):
    return [int(word[1:]) for word in text.split()]

  def decode(self, ids):
    return ' '.join(f'w{i}' for i in ids if i not in (0, EOS))


def test_a_model_trained_to_reverse_aligns_each_token_to_its_mirror(reverser):
  test = _reversal_pairs(20, seed=1)
  src = np.zeros((len(test), 16), np.int32)
  for row, (source, _) in enumerate(test):
    src[row, : len(source)] = source
  tokens = np.asarray(search.generate(reverser, src, beam_size=1, max_new_tokens=12))
  found = alignment.alignments(reverser, _WordPerToken(), src, tokens[:, None], 'pieces')
  mirrored = [
    alignment.pharaoh([(len(source) - 2 - j, j) for j in range(len(source) - 1)])
    for source, _ in test
  ]
  # Each link judged alone: the model's training path (it differs with the compiler's floating
  # point) leaves a few sentences with one link off, while a model that had not learnt to reverse
  # (or the wrong layer, or a transposed matrix) gets about one link in a sentence's length.
  links = [(set(f[0].split()), set(m.split())) for f, m in zip(found, mirrored)]
  right, total = sum(len(f & m) for f, m in links), sum(len(m) for _, m in links)
  assert right >= 0.85 * total, (right, total)


def test_translate_returns_and_prints_the_alignment(reverser):
  sentences = ['w5 w9 w3 w12', 'w7 w4 w8 w10 w20']
  hypotheses = translation.translate_n_best(
    reverser, _WordPerToken(), sentences, beam_size=2, n_best=2, alignment='words'
  )
  assert hypotheses[0][0].text == 'w12 w3 w9 w5'
  assert hypotheses[0][0].alignment == '3-0 2-1 1-2 0-3'
  assert hypotheses[1][0].alignment == '4-0 3-1 2-2 1-3 0-4'
  lines = command.format_lines(hypotheses, n_best=1, scores=False).splitlines()
  assert lines[0] == 'w12 w3 w9 w5 ||| 3-0 2-1 1-2 0-3'


def test_hard_alignment_skips_eos_and_padding_on_both_sides():
  weights = np.array(
    [[0.1, 0.7, 0.2, 0.0], [0.6, 0.1, 0.3, 0.0], [0.0, 0.0, 0.9, 0.1], [0.2, 0.2, 0.2, 0.4]]
  )
  # source: 7 8 EOS PAD; target: 5 6 EOS PAD. Row 2 looks most at the source EOS: it is the
  # target EOS and is skipped; the source EOS is never chosen.
  pairs = alignment.hard_alignment(weights, [7, 8, EOS, 0], [5, 6, EOS, 0], pad_id=0, eos_id=EOS)
  assert pairs == [(1, 0), (0, 1)]
  assert alignment.pharaoh(pairs) == '1-0 0-1'


def test_pieces_map_to_the_words_that_hold_them():
  source = ['\u2581The', '\u2581hous', 'es', '\u2581.']
  target = ['\u2581Les', '\u2581mais', 'ons', '\u2581.']
  assert alignment.word_indices(source) == [0, 1, 1, 2]
  pairs = [(0, 0), (1, 1), (2, 1), (2, 2), (3, 3)]
  assert alignment.to_words(pairs, source, target) == [(0, 0), (1, 1), (2, 2)]
