"""What the Marian and M2M100 fixtures share: the tiny model's sizes, a tokenized batch, and
transformers' own generation to compare with."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# The tiny BART-family model both fixtures build: two layers of width 16 per stack.
TINY_SIZES = dict(
  d_model=16,
  encoder_layers=2,
  decoder_layers=2,
  encoder_attention_heads=2,
  decoder_attention_heads=2,
  encoder_ffn_dim=32,
  decoder_ffn_dim=32,
  max_position_embeddings=64,
)


def hf_batch(hf_tokenizer, sentences: Sequence[str], max_length: int):
  """transformers' padded PyTorch batch of `sentences`, truncated to `max_length` tokens."""
  return hf_tokenizer(
    list(sentences), return_tensors='pt', padding=True, truncation=True, max_length=max_length
  )


def generated(hf, batch, **kwargs) -> np.ndarray:
  """transformers' `generate` of `batch` (greedy or beam, at most 20 new tokens, the pad token
  never generated), without the decoder start token; `kwargs` as `generate` takes them."""
  import torch

  with torch.no_grad():
    out = hf.generate(
      **batch,
      max_new_tokens=20,
      do_sample=False,
      early_stopping=False,
      bad_words_ids=[[hf.config.pad_token_id]],
      **kwargs,
    )
  return out.numpy()[:, 1:]
