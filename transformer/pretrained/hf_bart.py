"""The state dicts of Hugging Face's BART-family translation models (Marian, M2M100, NLLB) <->
this package's parameters.

The families name their layers alike (`model.{encoder,decoder}.layers.N.{self_attn,
encoder_attn}.{q,k,v,out}_proj`, `fc1`, `fc2`, `*_layer_norm`); they differ in what surrounds
the layers (a final LayerNorm per stack in M2M100, a logits bias in Marian), which the callers
say. Keys have a bias in these models; a key bias adds the same number to every logit of a
query, which the softmax cancels, so it is dropped on loading (exactly) and saved as zeros.

Weights are read tensor by tensor from `model.safetensors` or the shards a
`model.safetensors.index.json` lists, each converted to the model's parameter dtype as it is
read, so a load holds the model's parameters and one tensor more, never a second full copy;
`pytorch_model.bin` is read whole, only with torch installed.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterable, Iterator

from flax import nnx
import jax.numpy as jnp
import numpy as np

from transformer.model.encoder_decoder import Transformer, TransformerConfig, abstract_model

SAFETENSORS = 'model.safetensors'
SAFETENSORS_INDEX = 'model.safetensors.index.json'
TORCH_FILE = 'pytorch_model.bin'


class HuggingFaceError(ValueError):
  """A directory that is not a model this package can load, or a model the format cannot express."""


# The tokenizer files a directory of these families may hold (copied as they are on export).
TOKENIZER_FILES = (
  'sentencepiece.bpe.model',
  'vocab.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'source.spm',
  'target.spm',
  'target_vocab.json',
)


def read_config(directory: str) -> dict[str, Any]:
  """A model directory's config.json as a dict; HuggingFaceError, naming the file, otherwise
  (and for one of this package's training workdirs, which is no Hugging Face directory)."""
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    raise HuggingFaceError(f'{directory}: no config.json (not a Hugging Face model directory)')
  try:
    with open(path, encoding='utf-8') as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    raise HuggingFaceError(f'{path}: cannot be read as JSON ({e})') from None
  if not isinstance(hf, dict):
    raise HuggingFaceError(f'{path}: not a model configuration (a JSON object)')
  if hf.get('model_type') is None and os.path.exists(os.path.join(directory, 'model.json')):
    raise HuggingFaceError(
      f'{directory} is a training workdir of this package, not a Hugging Face model: give it as '
      '--workdir'
    )
  return hf


def generation_config(directory: str) -> dict[str, Any]:
  """The directory's generation settings: generation_config.json over config.json's."""
  hf = read_config(directory)
  path = os.path.join(directory, 'generation_config.json')
  if os.path.isfile(path):
    try:
      with open(path, encoding='utf-8') as f:
        hf = {**hf, **json.load(f)}
    except (OSError, ValueError) as e:
      raise HuggingFaceError(f'{path}: cannot be read as JSON ({e})') from None
  return hf


ACTIVATIONS = {'swish': 'swish', 'silu': 'swish', 'relu': 'relu', 'gelu': 'gelu'}


def shared_config(hf: dict[str, Any], default_activation: str) -> dict[str, Any]:
  """The `TransformerConfig` fields every family's `config.json` gives alike: sizes, dropouts,
  positions and the FFN activation (HuggingFaceError for what this package cannot express)."""
  for side in ('attention_heads', 'ffn_dim'):
    if hf[f'encoder_{side}'] != hf[f'decoder_{side}']:
      raise HuggingFaceError(
        f'encoder_{side}={hf[f"encoder_{side}"]} differs from decoder_{side}={hf[f"decoder_{side}"]}'
      )
  activation = hf.get('activation_function', default_activation)
  if activation not in ACTIVATIONS:
    raise HuggingFaceError(
      f'activation_function={activation!r} is not one of {sorted(ACTIVATIONS)}'
    )
  return dict(
    vocab_size=hf['vocab_size'],
    d_model=hf['d_model'],
    num_heads=hf['encoder_attention_heads'],
    d_ff=hf['encoder_ffn_dim'],
    num_encoder_layers=hf['encoder_layers'],
    num_decoder_layers=hf['decoder_layers'],
    dropout_rate=hf.get('dropout', 0.1),
    attention_dropout_rate=hf.get('attention_dropout', 0.0),
    relu_dropout_rate=hf.get('activation_dropout', 0.0),
    activation=ACTIVATIONS[activation],
    scale_embedding=hf.get('scale_embedding', True),
  )


def shared_hf_config(config: TransformerConfig) -> dict[str, Any]:
  """The `config.json` fields every family writes alike (the inverse of `shared_config`)."""
  return {
    'is_encoder_decoder': True,
    'vocab_size': config.vocab_size,
    'd_model': config.d_model,
    'encoder_layers': config.num_encoder_layers,
    'decoder_layers': config.num_decoder_layers,
    'encoder_attention_heads': config.num_heads,
    'decoder_attention_heads': config.num_heads,
    'encoder_ffn_dim': config.d_ff,
    'decoder_ffn_dim': config.d_ff,
    'activation_function': config.activation,
    'max_position_embeddings': config.max_positions,
    'scale_embedding': config.scale_embedding,
    'dropout': config.dropout_rate,
    'attention_dropout': config.attention_dropout_rate,
    'activation_dropout': config.relu_dropout_rate,
    'pad_token_id': config.pad_id,
    'eos_token_id': config.eos_id,
    'decoder_start_token_id': config.bos_id,
  }


def generation_defaults(directory: str) -> dict[str, Any]:
  """How the directory's model asks to be decoded (its generation_config.json, else the
  generation fields of config.json), in this package's terms: `forced_eos` (the last allowed
  token is EOS) and `beam_size` (None where the directory says nothing). Its `max_length` is
  not taken: each sentence's limit is its source length + `extra_length`, as for every model."""
  hf = generation_config(directory)
  beams = hf.get('num_beams')
  return {
    'forced_eos': hf.get('forced_eos_token_id') is not None,
    'beam_size': beams if isinstance(beams, int) and beams >= 1 else None,
  }


def copy_files(source: str, destination: str, names: Iterable[str]) -> None:
  """Copies the files of `names` that `source` has into `destination` (not onto themselves)."""
  for name in names:
    path = os.path.join(source, name)
    target = os.path.join(destination, name)
    if os.path.exists(path) and os.path.abspath(path) != os.path.abspath(target):
      shutil.copyfile(path, target)


class StateDict:
  """A directory's tensors by name, read on demand (`tensors[name]`, `name in tensors`)."""

  def __init__(self, directory: str):
    self.directory = directory
    self._files: dict[str, str] = {}  # tensor name -> file
    self._open: dict[str, Any] = {}
    self._whole: dict[str, np.ndarray] | None = None
    single, index = (os.path.join(directory, n) for n in (SAFETENSORS, SAFETENSORS_INDEX))
    if os.path.exists(index):
      self._index_shards(index)
    elif os.path.exists(single):
      self._index_file(single)
    else:
      self._whole = _read_torch(directory)

  def _index_shards(self, index: str) -> None:
    try:
      with open(index, encoding='utf-8') as f:
        weight_map = json.load(f)['weight_map']
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise HuggingFaceError(f'{index}: not a safetensors index ({e})') from None
    for name, file in weight_map.items():
      path = os.path.join(self.directory, file)
      if not os.path.exists(path):
        raise HuggingFaceError(f'{path}: missing (listed in {SAFETENSORS_INDEX})')
      self._files[name] = path

  def _index_file(self, path: str) -> None:
    for name in self._handle(path).keys():
      self._files[name] = path

  def _handle(self, path: str):
    if path not in self._open:
      from safetensors import safe_open

      try:
        self._open[path] = safe_open(path, framework='numpy')
      except Exception as e:  # safetensors raises its own error types for a damaged header
        raise HuggingFaceError(f'{path}: not a readable safetensors file ({e})') from None
    return self._open[path]

  def __contains__(self, name: str) -> bool:
    return name in (self._whole if self._whole is not None else self._files)

  def __getitem__(self, name: str) -> np.ndarray:
    if self._whole is not None:
      return self._whole[name]
    if name not in self._files:
      raise HuggingFaceError(f'{self.directory}: no tensor {name!r} in the checkpoint')
    return self._handle(self._files[name]).get_tensor(name)

  def get(self, name: str, default: Any = None) -> Any:
    return self[name] if name in self else default

  def names(self) -> Iterator[str]:
    return iter(self._whole if self._whole is not None else self._files)


def _read_torch(directory: str) -> dict[str, np.ndarray]:
  torch_file = os.path.join(directory, TORCH_FILE)
  if not os.path.exists(torch_file):
    raise HuggingFaceError(f'{directory}: no {SAFETENSORS} (or {SAFETENSORS_INDEX}, {TORCH_FILE})')
  try:
    import torch
  except ImportError:
    raise HuggingFaceError(
      f'{torch_file}: reading a PyTorch checkpoint needs torch (pip install torch), or convert it '
      f'to {SAFETENSORS}'
    ) from None
  state = torch.load(torch_file, map_location='cpu', weights_only=True)
  return {k: v.float().numpy() for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Loading: their names -> our parameter tree.


def _linear(tensors: StateDict, name: str) -> tuple[np.ndarray, np.ndarray]:
  """A PyTorch Linear's (weight [in, out], bias [out]) for x @ weight + bias."""
  return tensors[f'{name}.weight'].T, tensors[f'{name}.bias']


def _attention_params(tensors, prefix: str, heads: int, cross: bool) -> dict[str, np.ndarray]:
  """Our attention parameters from the q/k/v/out projections (the key bias dropped)."""
  (wq, bq), (wk, _), (wv, bv), (wo, bo) = (
    _linear(tensors, f'{prefix}.{p}_proj') for p in ('q', 'k', 'v', 'out')
  )
  d_model = wq.shape[0]
  split = lambda w: w.reshape(d_model, heads, d_model // heads)
  params = {
    'b_q': bq.reshape(heads, -1),
    'b_v': bv.reshape(heads, -1),
    'w_o': wo.reshape(heads, d_model // heads, d_model),
    'b_o': bo,
  }
  if cross:
    params.update(w_q=split(wq), w_kv=np.stack([split(wk), split(wv)], axis=1))
  else:
    params['w_qkv'] = np.stack([split(wq), split(wk), split(wv)], axis=1)
  return params


def _norm_params(tensors, name: str) -> dict[str, dict[str, np.ndarray]]:
  return {'norm': {'scale': tensors[f'{name}.weight'], 'bias': tensors[f'{name}.bias']}}


# Each sublayer of ours -> the BART family's module of a layer (`model.encoder.layers.3.` + it),
# the one table that loading and saving both read; the cross-attention ones are the decoder's.
SUBLAYERS = {
  'self_attention': 'self_attn',
  'self_attention_norm': 'self_attn_layer_norm',
  'cross_attention': 'encoder_attn',
  'cross_attention_norm': 'encoder_attn_layer_norm',
  'feed_forward_norm': 'final_layer_norm',
}
CROSS_SUBLAYERS = ('cross_attention', 'cross_attention_norm')
FEED_FORWARD = {'w_1': 'fc1', 'w_2': 'fc2'}  # our FeedForward's linears -> theirs


def _sublayers(decoder: bool) -> list[tuple[str, str]]:
  """(ours, theirs) of the sublayers a layer of that stack has."""
  return [(o, t) for o, t in SUBLAYERS.items() if decoder or o not in CROSS_SUBLAYERS]


def _layer_params(tensors, prefix: str, heads: int, decoder: bool) -> dict[str, Any]:
  layer: dict[str, Any] = {}
  for ours, theirs in _sublayers(decoder):
    name = f'{prefix}.{theirs}'
    if ours.endswith('_norm'):
      layer[ours] = _norm_params(tensors, name)
    else:
      layer[ours] = _attention_params(tensors, name, heads, cross=ours == 'cross_attention')
  layer['feed_forward'] = {}
  for ours, theirs in FEED_FORWARD.items():
    kernel, bias = _linear(tensors, f'{prefix}.{theirs}')
    layer['feed_forward'][ours] = {'kernel': kernel, 'bias': bias}
  return layer


def _stack_params(tensors, side: str, count: int, heads: int, final_norm: bool) -> dict:
  stack: dict[str, Any] = {
    'layers': {
      i: _layer_params(tensors, f'model.{side}.layers.{i}', heads, side == 'decoder')
      for i in range(count)
    }
  }
  if final_norm:
    norm = tensors[f'model.{side}.layer_norm.weight'], tensors[f'model.{side}.layer_norm.bias']
    stack['final_norm'] = {'scale': norm[0], 'bias': norm[1]}
  return stack


def _embedding_params(tensors, config: TransformerConfig) -> dict[str, Any]:
  if config.share_embeddings:
    table = tensors.get('model.shared.weight')
    table = tensors['model.encoder.embed_tokens.weight'] if table is None else table
    return {'embed': {'table': {'embedding': table}}}
  return {
    'embed': {'table': {'embedding': tensors['model.encoder.embed_tokens.weight']}},
    'target_embed': {'table': {'embedding': tensors['model.decoder.embed_tokens.weight']}},
  }


def load_model(tensors: StateDict, config: TransformerConfig) -> Transformer:
  """The `Transformer` (eval mode) of `config` with the state dict's weights, each converted to
  the parameter dtype as its layer is read. A final LayerNorm per stack is read for pre-LN
  models, `final_logits_bias` where the config has a logits bias."""
  graphdef, abstract, rest = abstract_model(config)
  dtype = config.parameter_dtype
  pre = config.norm_position == 'pre'
  convert = lambda tree: _to_params(tree, dtype)
  values: dict[str, Any] = convert(_embedding_params(tensors, config))
  for side, count in (
    ('encoder', config.num_encoder_layers),
    ('decoder', config.num_decoder_layers),
  ):
    values[side] = convert(_stack_params(tensors, side, count, config.num_heads, pre))
  if config.logits_bias:
    bias = tensors.get('final_logits_bias', np.zeros((1, config.target_vocabulary), np.float32))
    values['logits_bias'] = convert(bias[0])
  check_shapes(nnx.to_pure_dict(abstract), values)
  nnx.replace_by_pure_dict(abstract, values)
  model = nnx.merge(graphdef, abstract, rest)
  model.eval()
  return model


def _to_params(tree: Any, dtype) -> Any:
  """NumPy leaves -> arrays of the parameter dtype (the NumPy copies are freed as it goes)."""
  if isinstance(tree, dict):
    return {k: _to_params(v, dtype) for k, v in tree.items()}
  return jnp.asarray(np.asarray(tree), dtype)


def check_shapes(expected: dict, values: dict, path: str = '') -> None:
  """Raises HuggingFaceError naming the first parameter whose shape does not fit the model."""
  for key, want in expected.items():
    if key not in values:
      raise HuggingFaceError(f'no weights for {path}{key}')
    if isinstance(want, dict):
      check_shapes(want, values[key], f'{path}{key}.')
    elif tuple(np.shape(values[key])) != tuple(want.shape):
      raise HuggingFaceError(
        f'{path}{key}: {np.shape(values[key])} in the checkpoint, {tuple(want.shape)} in the model'
      )


# ---------------------------------------------------------------------------------------------
# Saving: our parameter tree -> their names.


def _attention_tensors(params: dict, prefix: str, d_model: int) -> dict[str, np.ndarray]:
  if 'w_qkv' in params:
    wq, wk, wv = (params['w_qkv'][:, i].reshape(d_model, d_model) for i in range(3))
  else:
    wq = params['w_q'].reshape(d_model, d_model)
    wk, wv = (params['w_kv'][:, i].reshape(d_model, d_model) for i in range(2))
  tensors = {f'{prefix}.{name}_proj.weight': w.T for name, w in (('q', wq), ('k', wk), ('v', wv))}
  tensors[f'{prefix}.q_proj.bias'] = params['b_q'].reshape(-1)
  tensors[f'{prefix}.k_proj.bias'] = np.zeros(d_model, np.float32)  # the softmax cancels it
  tensors[f'{prefix}.v_proj.bias'] = params['b_v'].reshape(-1)
  tensors[f'{prefix}.out_proj.weight'] = params['w_o'].reshape(d_model, d_model).T
  tensors[f'{prefix}.out_proj.bias'] = params['b_o']
  return tensors


def _layer_tensors(layer: dict, prefix: str, d_model: int) -> dict[str, np.ndarray]:
  tensors: dict[str, np.ndarray] = {}
  for ours, theirs in _sublayers('cross_attention' in layer):
    name = f'{prefix}.{theirs}'
    if ours.endswith('_norm'):
      tensors[f'{name}.weight'] = layer[ours]['norm']['scale']
      tensors[f'{name}.bias'] = layer[ours]['norm']['bias']
    else:
      tensors.update(_attention_tensors(layer[ours], name, d_model))
  for ours, theirs in FEED_FORWARD.items():
    tensors[f'{prefix}.{theirs}.weight'] = layer['feed_forward'][ours]['kernel'].T
    tensors[f'{prefix}.{theirs}.bias'] = layer['feed_forward'][ours]['bias']
  return tensors


def state_dict(params: dict, config: TransformerConfig) -> dict[str, np.ndarray]:
  """Their state dict (float32) from our parameter tree (nested dicts of NumPy arrays): the
  layers, the embeddings, each stack's final LayerNorm (pre-LN) and `final_logits_bias` (where
  the config has a logits bias)."""
  d = config.d_model
  tensors: dict[str, np.ndarray] = {}
  for side, count in (
    ('encoder', config.num_encoder_layers),
    ('decoder', config.num_decoder_layers),
  ):
    for i in range(count):
      tensors.update(_layer_tensors(params[side]['layers'][i], f'model.{side}.layers.{i}', d))
    if config.norm_position == 'pre':
      tensors[f'model.{side}.layer_norm.weight'] = params[side]['final_norm']['scale']
      tensors[f'model.{side}.layer_norm.bias'] = params[side]['final_norm']['bias']
  source = params['embed']['table']['embedding']
  if config.share_embeddings:
    tensors['model.shared.weight'] = source
  else:
    tensors['model.encoder.embed_tokens.weight'] = source
    tensors['model.decoder.embed_tokens.weight'] = params['target_embed']['table']['embedding']
  if config.logits_bias:
    tensors['final_logits_bias'] = np.asarray(params['logits_bias']).reshape(1, -1)
  return {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
