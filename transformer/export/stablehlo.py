"""The translate computation (encoder + greedy or beam search) serialized with `jax.export`.

One artifact per (beam size, source-length bucket): `[batch, source_length]` int32 source ids
(EOS included, right-padded with `pad_id`) and `[batch]` int32 token limits in; the best
hypothesis `[batch, output_length]` int32 (`pad_id` after EOS) and its score `[batch]` float32
out. The batch dimension is symbolic (any batch size); source lengths are the multiples of 16
that `transformer.decoding.translation` pads to, each with the output length `translate` gives it, so
every artifact computes exactly what `translate` computes. The parameters are arguments (a flat
list, stored beside the artifacts in params.npz), not constants: one file of weights for all
artifacts. Each artifact is lowered for CPU, CUDA and TPU.

The directory also holds `serve.py` (a copy of `transformer/export/serve_stablehlo.py`), which
loads and calls the artifacts with jax and NumPy alone, and the SentencePiece model(s).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Sequence

from flax import nnx
import jax
from jax import export
import jax.numpy as jnp
import numpy as np

from transformer.decoding import search
from transformer.decoding.batch import Batch
from transformer.decoding.options import DecodingOptions

PLATFORMS = ('cpu', 'cuda', 'tpu')
MANIFEST = 'manifest.json'
PARAMS = 'params.npz'
SERVE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'serve_stablehlo.py')


def source_buckets(max_positions: int) -> list[int]:
  """The source lengths `translate` pads to: multiples of 16 up to `max_positions`."""
  return sorted({search.bucket(n, max_positions) for n in range(1, max_positions + 1)})


def _translate_function(model, options: DecodingOptions, buffer_length: int):
  """(parameter leaves, src_tokens, limits) -> (tokens, scores), with the model's structure and
  non-parameter state (its RNG keys, unused in eval mode) closed over. The leaves arrive as
  params.npz holds them and are cast to the model's parameter dtypes."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  leaves, treedef = jax.tree.flatten(params)
  dtypes = [leaf.dtype for leaf in leaves]

  def translate(parameter_leaves, src_tokens, limits):
    cast = [jnp.asarray(x).astype(dtype) for x, dtype in zip(parameter_leaves, dtypes)]
    m = nnx.merge(graphdef, jax.tree.unflatten(treedef, cast), rest)
    m.eval()
    batch = Batch.of(src_tokens)
    tokens, scores = search.search_model(
      m, batch, limits, buffer_length=buffer_length, options=options
    )
    return tokens[:, 0], scores[:, 0]

  return translate


def parameter_leaves(model) -> list[np.ndarray]:
  """The model's parameters in the order the artifacts take them, as params.npz holds them:
  floating types as float32 (NumPy has no bfloat16)."""
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  arrays = [np.asarray(leaf) for leaf in leaves]
  return [a.astype(np.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in arrays]


def _export_one(translate, stored: list[np.ndarray], source_length: int) -> export.Exported:
  (batch,) = export.symbolic_shape('batch')
  parameter_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in stored]
  return export.export(jax.jit(translate), platforms=PLATFORMS)(
    parameter_specs,
    jax.ShapeDtypeStruct((batch, source_length), jnp.int32),
    jax.ShapeDtypeStruct((batch,), jnp.int32),
  )


def save(
  model,
  tokenizer_files: dict[str, str],
  directory: str,
  *,
  beam_sizes: Sequence[int] = (1, 4),
  source_lengths: Sequence[int] | None = None,
  extra_length: int = DecodingOptions.extra_length,
  length_penalty: float = DecodingOptions.length_penalty,
  length_normalization: str = DecodingOptions.length_normalization,
) -> dict[str, Any]:
  """Writes the artifacts, params.npz, manifest.json, serve.py and the tokenizer files to
  `directory` (which must not exist yet) and returns the manifest."""
  config = model.config
  lengths = sorted(source_lengths or source_buckets(config.max_positions))
  stored = parameter_leaves(model)
  os.makedirs(directory)
  artifacts = []
  for beam_size in beam_sizes:
    for length in lengths:
      output_length = search.bucket(length + extra_length, config.max_positions)
      options = DecodingOptions(
        beam_size=beam_size,
        length_penalty=length_penalty,
        length_normalization=length_normalization,
      )
      name = f'translate_beam{beam_size}_source{length}.jax_exported'
      exported = _export_one(_translate_function(model, options, output_length), stored, length)
      with open(os.path.join(directory, name), 'wb') as f:
        f.write(exported.serialize())
      artifacts.append(
        dict(file=name, beam_size=beam_size, source_length=length, output_length=output_length)
      )
  np.savez(os.path.join(directory, PARAMS), *stored)
  for name, path in tokenizer_files.items():
    shutil.copyfile(path, os.path.join(directory, name))
  shutil.copyfile(SERVE_SCRIPT, os.path.join(directory, 'serve.py'))
  manifest = _manifest(
    config, artifacts, tokenizer_files, extra_length, length_penalty, length_normalization
  )
  with open(os.path.join(directory, MANIFEST), 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=2)
  return manifest


def _manifest(
  config, artifacts, tokenizer_files, extra_length, length_penalty, normalization
) -> dict:
  files = list(tokenizer_files)
  return {
    'format': 'jax.export (StableHLO), serialized with Exported.serialize()',
    'platforms': list(PLATFORMS),
    'params': PARAMS,
    'call': 'jax.export.deserialize(bytearray(file)).call(params, src_tokens, limits), params '
    f'= [np.load({PARAMS!r})[f"arr_{{i}}"] for i in range(len(files))] (in that order)',
    'inputs': {
      'src_tokens': '[batch, source_length] int32: source ids + EOS, right-padded with pad_id',
      'limits': '[batch] int32: tokens each sentence may generate (EOS included), at most '
      'output_length; translate uses min(source ids + EOS + extra_length, max_positions)',
    },
    'outputs': {
      'tokens': '[batch, output_length] int32: the best hypothesis, EOS included, then pad_id',
      'scores': '[batch] float32: its length-normalised log-probability (0 for beam_size 1)',
    },
    'artifacts': artifacts,
    'ids': {'pad': config.pad_id, 'bos': config.bos_id, 'eos': config.eos_id},
    'max_positions': config.max_positions,
    'extra_length': extra_length,
    'length_penalty': length_penalty,
    'length_normalization': normalization,
    'tokenizer': {'source': files[0], 'target': files[-1]},
  }
