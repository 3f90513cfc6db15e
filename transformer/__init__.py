"""transformer: the encoder-decoder Transformer of "Attention Is All You Need" in JAX and Flax NNX.

    from transformer import Transformer, TransformerConfig, DecodingOptions

The package is layered; each subpackage imports only those below it:

    model/           the encoder-decoder: attention, layers, masks, scanned stacks, precision
    parallel/        how a step uses devices: strategies, the mesh and its sharding rules
    input_pipeline/  corpora, SentencePiece, batches (the only layer that needs TensorFlow/grain)
    decoding/        options, greedy/beam search, sampling, ensembles, alignment, translation
    pretrained/      Hugging Face Marian (opus-mt) and M2M100/NLLB models, loaded exactly
    training/        the loop, steps, config, data, recipe, checkpoints, the workdir, evaluation
    export/          CTranslate2 and jax.export artifacts
    translate.py, average.py, run_config.py, export/__main__.py: the commands; linen.py: the
                     Linen bridge

The names below are loaded on first use (`transformer._lazy`): importing the package never
imports JAX, TensorFlow or grain.
"""

from transformer import _lazy

_EXPORTS = {
  'Cache': 'model.attention',
  'CrossCache': 'model.attention',
  'SelfCache': 'model.attention',
  'CrossAttention': 'model.attention',
  'SelfAttention': 'model.attention',
  'dot_product_attention': 'model.attention',
  'Embed': 'model.layers',
  'FeedForward': 'model.layers',
  'PositionalEncoding': 'model.layers',
  'sinusoidal_table': 'model.layers',
  'AddNorm': 'model.encoder_decoder',
  'Decoder': 'model.encoder_decoder',
  'DecoderBlock': 'model.encoder_decoder',
  'Encoder': 'model.encoder_decoder',
  'EncoderBlock': 'model.encoder_decoder',
  'Transformer': 'model.encoder_decoder',
  'TransformerConfig': 'model.encoder_decoder',
  'count_params': 'model.encoder_decoder',
  'shift_right': 'model.encoder_decoder',
  'DecodingOptions': 'decoding.options',
  'Ensemble': 'decoding.ensemble',
}
__all__ = sorted(_EXPORTS)
__version__ = '0.2.0'
__getattr__, __dir__ = _lazy.exports(__name__, _EXPORTS)
