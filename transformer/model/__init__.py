"""The encoder-decoder of the paper as Flax NNX modules: attention (masks before the softmax),
the layers, the blocks and stacks, positions, the output projection; scanned stacks and the
matmul precision policy.
"""

from transformer import _lazy

_EXPORTS = {
  'Transformer': 'encoder_decoder',
  'TransformerConfig': 'encoder_decoder',
  'Encoder': 'encoder_decoder',
  'Decoder': 'encoder_decoder',
  'EncoderBlock': 'encoder_decoder',
  'DecoderBlock': 'encoder_decoder',
  'AddNorm': 'encoder_decoder',
  'shift_right': 'encoder_decoder',
  'count_params': 'encoder_decoder',
  'abstract_model': 'encoder_decoder',
  'SelfAttention': 'attention',
  'CrossAttention': 'attention',
  'Cache': 'attention',
  'SelfCache': 'attention',
  'CrossCache': 'attention',
  'dot_product_attention': 'attention',
  'Embed': 'layers',
  'FeedForward': 'layers',
  'PositionalEncoding': 'layers',
  'sinusoidal_table': 'layers',
  'unrolled': 'scanned',
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
