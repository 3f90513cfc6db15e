"""Choosing the beam size and length penalty on validation: the best BLEU wins, the first α (the
configured one) and the smaller beam win ties."""

from transformer.training import evaluation


class _Scripted:
  """An evaluator whose BLEU for each (beam, α) is given, recording what it was asked."""

  def __init__(self, table):
    self.table, self.asked = table, []

  def bleu(self, model, pairs, *, beam_size, length_penalty):
    self.asked.append((beam_size, length_penalty))
    return self.table[(beam_size, length_penalty)], 'signature', []


def test_the_best_beam_and_length_penalty_on_validation_are_chosen():
  table = {(1, 0.6): 20.0, (4, 0.6): 21.0, (4, 1.0): 23.5, (4, 1.4): 22.0, (4, 0.2): 19.0}
  evaluator = _Scripted(table)
  chosen = evaluation.choose_decoding(evaluator, None, [], [4, 1], [0.6, 0.2, 1.0, 1.4], say=str)
  assert (chosen['beam_size'], chosen['length_penalty'], chosen['validation_bleu']) == (
    4,
    1.0,
    23.5,
  )
  assert chosen['length_penalties'] == {'1': 0.6, '4': 1.0}
  # Greedy decoding has no length penalty to try: it is decoded once.
  assert evaluator.asked == [(1, 0.6), (4, 0.6), (4, 0.2), (4, 1.0), (4, 1.4)]
  assert len(chosen['tried']) == 5


def test_ties_keep_the_first_penalty_and_the_smaller_beam():
  table = {(1, 0.6): 21.0, (2, 0.6): 21.0, (2, 1.0): 21.0}
  chosen = evaluation.choose_decoding(_Scripted(table), None, [], [1, 2], [0.6, 1.0], say=str)
  assert (chosen['beam_size'], chosen['length_penalty']) == (1, 0.6)
  assert chosen['length_penalties'] == {'1': 0.6, '2': 0.6}
