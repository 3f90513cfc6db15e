"""Decoding a model: the options, greedy and beam search on the KV cache, sampling, ensembles,
alignments, and translating text in batches.
"""

from transformer import _lazy

_EXPORTS = {
  'Batch': 'batch',
  'DecodingOptions': 'options',
  'Sampling': 'options',
  'Ensemble': 'ensemble',
  'generate': 'search',
  'generate_n_best': 'search',
  'log_probability': 'search',
  'translate': 'translation',
  'translate_n_best': 'translation',
  'Hypothesis': 'translation',
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
