"""transformer: the encoder-decoder Transformer of "Attention Is All You Need" in JAX and Flax NNX.

    from transformer import Transformer, TransformerConfig

The names below are loaded on first use, so that `import transformer.<module>` imports only what
that module needs (the translate CLI checks its input before JAX and Flax load). Importing the
package never imports TensorFlow or grain: only `transformer.input_pipeline` needs them.
"""

import importlib

_EXPORTS = {
  'Cache': 'attention',
  'CrossCache': 'attention',
  'SelfCache': 'attention',
  'CrossAttention': 'attention',
  'SelfAttention': 'attention',
  'dot_product_attention': 'attention',
  'Embed': 'layers',
  'FeedForward': 'layers',
  'PositionalEncoding': 'layers',
  'sinusoidal_table': 'layers',
  'AddNorm': 'model',
  'Decoder': 'model',
  'DecoderBlock': 'model',
  'Encoder': 'model',
  'EncoderBlock': 'model',
  'Transformer': 'model',
  'TransformerConfig': 'model',
  'count_params': 'model',
  'shift_right': 'model',
  'DecodingOptions': 'decoding_options',
  'Ensemble': 'ensemble',
}
__all__ = sorted(_EXPORTS)
__version__ = '0.2.0'


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'transformer.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
