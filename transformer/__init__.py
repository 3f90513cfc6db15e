"""transformer: the encoder-decoder Transformer of "Attention Is All You Need" in JAX and Flax NNX.

Importing this package never imports TensorFlow; only `transformer.input_pipeline` needs it.
"""

from transformer.attention import Cache, MultiHeadAttention, dot_product_attention
from transformer.layers import Embed, FeedForward, PositionalEncoding, sinusoidal_table
from transformer.model import (AddNorm, Decoder, DecoderBlock, Encoder, EncoderBlock, Transformer,
                               TransformerConfig, count_params, shift_right)

__all__ = [
    'AddNorm', 'Cache', 'Decoder', 'DecoderBlock', 'Embed', 'Encoder', 'EncoderBlock',
    'FeedForward', 'MultiHeadAttention', 'PositionalEncoding', 'Transformer', 'TransformerConfig',
    'count_params', 'dot_product_attention', 'shift_right', 'sinusoidal_table',
]
__version__ = '0.1.0'
