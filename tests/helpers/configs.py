"""The tiny model most tests use: 2+2 layers of width 32, fast on a CPU."""

from transformer.model.encoder_decoder import TransformerConfig


def tiny_config(**overrides) -> TransformerConfig:
  values = dict(
    vocab_size=40,
    d_model=32,
    num_heads=4,
    d_ff=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout_rate=0.0,
    max_positions=64,
  )
  return TransformerConfig(**{**values, **overrides})
