"""Hugging Face translation models loaded exactly and saved back: Marian (opus-mt) and
M2M100 (NLLB-200), each on the BART family's shared reading (`hf_bart`); `families` tells
a directory's family and dispatches to it.
"""

from transformer import _lazy

_EXPORTS = {
  'load': 'families',
  'load_tokenizer': 'families',
  'save': 'families',
  'family': 'families',
  'generation_defaults': 'families',
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
