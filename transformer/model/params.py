"""A model's parameters as plain NumPy arrays, what the converters (Hugging Face, CTranslate2)
read by module path."""

from __future__ import annotations

from typing import Callable

from flax import nnx
import numpy as np

from transformer.model import scanned
from transformer.model.encoder_decoder import Transformer


def numpy_params(model: Transformer) -> dict:
  """The model's parameters as nested dicts of NumPy arrays, one entry per layer (a model with
  scanned stacks is unrolled first): `params['encoder']['layers'][0]['self_attention']...`."""
  model = scanned.unrolled(model)
  to_numpy: Callable = lambda tree: {
    k: to_numpy(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()
  }
  return to_numpy(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
