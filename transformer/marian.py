"""Hugging Face Marian (opus-mt) directories <-> this package's `Transformer`.

    from transformer import marian
    model, tokenizer = marian.load('opus-mt-en-de')     # a MarianMTModel directory
    logits = model(src_ids, decoder_input_ids)           # = MarianMTModel(input_ids=..., ...)
    marian.save(model, tokenizer, 'exported')            # MarianMTModel.from_pretrained reads it

A Marian model is this package's Transformer with other options (`TransformerConfig`): post-LN
without a final norm, the FFN activation of its config (swish in opus-mt), a bias on the output
logits (`final_logits_bias`), sinusoids laid out in halves (sines, then cosines) from position 0,
LayerNorm epsilon 1e-5, the embedding scaled by √d_model, one vocabulary for source, target and
output (or a separate decoder vocabulary), pad as the last id, EOS 0 and the decoder starting
with the pad token. Keys in Marian have a bias; a key bias adds the same number to every logit
of a query, which the softmax cancels, so it is dropped on loading (exactly) and saved as zeros.

Weights are read from `model.safetensors` (NumPy, no torch); a `pytorch_model.bin` only with
torch installed. The tokenizer is `MarianTokenizer` below: `source.spm` splits the source,
`target.spm` the target, `vocab.json` maps pieces to ids (unknown pieces to `<unk>`), EOS is
appended and no BOS. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from typing import Any, Callable, Iterable, Sequence

from flax import nnx
import numpy as np
import sentencepiece as spm

from transformer.model import Transformer, TransformerConfig, abstract_model

_ACTIVATIONS = {'swish': 'swish', 'silu': 'swish', 'relu': 'relu', 'gelu': 'gelu'}
_LANGUAGE_CODE = re.compile(r'^>>.+?<<')


class MarianError(ValueError):
  """A directory that is not a Marian model this package can load, or a model Marian cannot express."""


class MarianTokenizer:
  """Text <-> ids as transformers' MarianTokenizer makes them (see the module docstring).

  The interface of `transformer.input_pipeline.tokenizer.Tokenizer`: `encode` (source side),
  `encode_batch(texts, side)`, `decode` (target side), `vocab_size`, `pad_id`, `special_ids`.
  """

  def __init__(self, directory: str, *, pad_id: int, eos_id: int, bos_id: int):
    self.path = directory
    files = {
      name: os.path.join(directory, name) for name in ('source.spm', 'target.spm', 'vocab.json')
    }
    for path in files.values():
      if not os.path.exists(path):
        raise MarianError(
          f'{path}: missing (a Marian tokenizer needs source.spm, target.spm and vocab.json)'
        )
    self.spm = {
      'source': _processor(files['source.spm']),
      'target': _processor(files['target.spm']),
    }
    with open(files['vocab.json'], encoding='utf-8') as f:
      self.vocab = {'source': json.load(f)}
    target_vocab = os.path.join(directory, 'target_vocab.json')
    if os.path.exists(target_vocab):
      with open(target_vocab, encoding='utf-8') as f:
        self.vocab['target'] = json.load(f)
    else:
      self.vocab['target'] = self.vocab['source']
    if '<unk>' not in self.vocab['source']:
      raise MarianError(f"{files['vocab.json']}: no '<unk>' entry")
    unknown = self.vocab['source']['<unk>']
    self.unk_id = {side: vocab.get('<unk>', unknown) for side, vocab in self.vocab.items()}
    self.pieces = {i: piece for piece, i in self.vocab['target'].items()}
    self._ids = {'pad_id': pad_id, 'bos_id': bos_id, 'eos_id': eos_id}

  @property
  def vocab_size(self) -> int:
    return len(self.vocab['source'])

  @property
  def loader(self) -> Callable[[], 'MarianTokenizer']:
    """A picklable function that loads this tokenizer again (in another process)."""
    return functools.partial(load_tokenizer, self.path)

  @property
  def pad_id(self) -> int:
    return self._ids['pad_id']

  @property
  def special_ids(self) -> dict[str, int]:
    return dict(self._ids)

  def encode(self, text: str, side: str = 'source') -> list[int]:
    """Ids of `text` on one side, without EOS (a leading `>>lang<<` code is one token)."""
    code = _LANGUAGE_CODE.match(text)
    pieces = [code.group(0)] if code else []
    pieces += self.spm[side].encode(text[code.end() :] if code else text, out_type=str)
    vocab, unknown = self.vocab[side], self.unk_id[side]
    return [vocab.get(piece, unknown) for piece in pieces]

  def encode_batch(self, texts: Sequence[str], side: str = 'source') -> list[list[int]]:
    return [self.encode(text, side) for text in texts]

  def decode(self, ids: Iterable[int]) -> str:
    """Target text of `ids` up to the first EOS; pad and unknown ids are skipped."""
    pieces = []
    for i in ids:
      i = int(i)
      if i == self._ids['eos_id']:
        break
      if i not in (self._ids['pad_id'], self.unk_id['target']) and i in self.pieces:
        pieces.append(self.pieces[i])
    return self.spm['target'].decode_pieces(pieces).replace('\u2581', ' ').strip()


def read_config(directory: str) -> dict[str, Any]:
  """A Marian directory's config.json; MarianError, naming the file, for anything else."""
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    raise MarianError(f'{directory}: no config.json (not a Hugging Face model directory)')
  try:
    with open(path, encoding='utf-8') as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    raise MarianError(f'{path}: cannot be read as JSON ({e})') from None
  if not isinstance(hf, dict):
    raise MarianError(f'{path}: not a model configuration (a JSON object)')
  if hf.get('model_type') is None and os.path.exists(os.path.join(directory, 'model.json')):
    raise MarianError(
      f'{directory} is a training workdir of this package, not a Marian model: give it as --workdir'
    )
  if hf.get('model_type') not in (None, 'marian') or 'pad_token_id' not in hf:
    raise MarianError(f"{path}: model_type {hf.get('model_type')!r} is not 'marian'")
  return hf


def generation_defaults(directory: str) -> dict[str, Any]:
  """How the directory's model asks to be decoded (its generation_config.json, else the
  generation fields of config.json), in this package's terms: `forced_eos` (the last allowed
  token is EOS) and `beam_size` (None where the directory says nothing). Its `max_length` is
  not taken: each sentence's limit is its source length + `extra_length`, as for every model."""
  hf = read_config(directory)
  path = os.path.join(directory, 'generation_config.json')
  if os.path.isfile(path):
    try:
      with open(path, encoding='utf-8') as f:
        hf = {**hf, **json.load(f)}
    except (OSError, ValueError) as e:
      raise MarianError(f'{path}: cannot be read as JSON ({e})') from None
  beams = hf.get('num_beams')
  return {
    'forced_eos': hf.get('forced_eos_token_id') is not None,
    'beam_size': beams if isinstance(beams, int) and beams >= 1 else None,
  }


def load_tokenizer(directory: str) -> MarianTokenizer:
  """The Marian tokenizer of a model directory (its ids come from the directory's config.json)."""
  hf = read_config(directory)
  bos = hf.get('decoder_start_token_id', hf['pad_token_id'])
  return MarianTokenizer(
    directory, pad_id=hf['pad_token_id'], eos_id=hf['eos_token_id'], bos_id=bos
  )


def _processor(path: str) -> spm.SentencePieceProcessor:
  return spm.SentencePieceProcessor(model_file=path)


def config_from_marian(hf: dict[str, Any], dtype: str = 'float32') -> TransformerConfig:
  """The TransformerConfig of a Marian `config.json`."""
  for encoder_key, decoder_key in (
    ('encoder_attention_heads', 'decoder_attention_heads'),
    ('encoder_ffn_dim', 'decoder_ffn_dim'),
  ):
    if hf[encoder_key] != hf[decoder_key]:
      raise MarianError(
        f'{encoder_key}={hf[encoder_key]} differs from {decoder_key}={hf[decoder_key]}'
      )
  activation = hf.get('activation_function', 'swish')
  if activation not in _ACTIVATIONS:
    raise MarianError(f'activation_function={activation!r} is not one of {sorted(_ACTIVATIONS)}')
  shared = hf.get('share_encoder_decoder_embeddings', True)
  return TransformerConfig(
    vocab_size=hf['vocab_size'],
    d_model=hf['d_model'],
    num_heads=hf['encoder_attention_heads'],
    d_ff=hf['encoder_ffn_dim'],
    num_encoder_layers=hf['encoder_layers'],
    num_decoder_layers=hf['decoder_layers'],
    dropout_rate=hf.get('dropout', 0.1),
    attention_dropout_rate=hf.get('attention_dropout', 0.0),
    relu_dropout_rate=hf.get('activation_dropout', 0.0),
    max_positions=hf.get('max_position_embeddings', 512),
    norm_position='post',
    dtype=dtype,
    pad_id=hf['pad_token_id'],
    bos_id=hf.get('decoder_start_token_id', hf['pad_token_id']),
    eos_id=hf['eos_token_id'],
    activation=_ACTIVATIONS[activation],
    scale_embedding=hf.get('scale_embedding', True),
    sinusoid_layout='halves',
    layer_norm_epsilon=1e-5,
    logits_bias=True,
    share_embeddings=shared,
    target_vocab_size=None if shared else hf.get('decoder_vocab_size') or hf['vocab_size'],
  )


def _read_weights(directory: str) -> dict[str, np.ndarray]:
  safetensors_file = os.path.join(directory, 'model.safetensors')
  if os.path.exists(safetensors_file):
    from safetensors.numpy import load_file

    return {k: np.asarray(v, np.float32) for k, v in load_file(safetensors_file).items()}
  torch_file = os.path.join(directory, 'pytorch_model.bin')
  if not os.path.exists(torch_file):
    raise MarianError(f'{directory}: no model.safetensors (or pytorch_model.bin)')
  try:
    import torch
  except ImportError:
    raise MarianError(
      f'{torch_file}: reading a PyTorch checkpoint needs torch (pip install torch), or convert it '
      'to model.safetensors'
    ) from None
  state = torch.load(torch_file, map_location='cpu', weights_only=True)
  return {k: v.float().numpy() for k, v in state.items()}


def _linear(tensors: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
  """A PyTorch Linear's (weight [in, out], bias [out]) for x @ weight + bias."""
  return tensors[f'{name}.weight'].T, tensors[f'{name}.bias']


def _attention_params(tensors, prefix: str, heads: int, cross: bool) -> dict[str, np.ndarray]:
  """Our attention parameters from Marian's q/k/v/out projections (the key bias dropped)."""
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


def _ffn_params(tensors, prefix: str) -> dict[str, dict[str, np.ndarray]]:
  (w1, b1), (w2, b2) = _linear(tensors, f'{prefix}.fc1'), _linear(tensors, f'{prefix}.fc2')
  return {'w_1': {'kernel': w1, 'bias': b1}, 'w_2': {'kernel': w2, 'bias': b2}}


def _layer_params(tensors, prefix: str, heads: int, decoder: bool) -> dict[str, Any]:
  layer = {
    'self_attention': _attention_params(tensors, f'{prefix}.self_attn', heads, cross=False),
    'self_attention_norm': _norm_params(tensors, f'{prefix}.self_attn_layer_norm'),
    'feed_forward': _ffn_params(tensors, prefix),
    'feed_forward_norm': _norm_params(tensors, f'{prefix}.final_layer_norm'),
  }
  if decoder:
    layer['cross_attention'] = _attention_params(
      tensors, f'{prefix}.encoder_attn', heads, cross=True
    )
    layer['cross_attention_norm'] = _norm_params(tensors, f'{prefix}.encoder_attn_layer_norm')
  return layer


def params_from_marian(tensors: dict[str, np.ndarray], config: TransformerConfig) -> dict[str, Any]:
  """Our parameter tree (as nested dicts) from a MarianMTModel state dict."""
  heads = config.num_heads
  if config.share_embeddings:
    source = target = tensors.get(
      'model.shared.weight', tensors.get('model.encoder.embed_tokens.weight')
    )
  else:
    source, target = (
      tensors['model.encoder.embed_tokens.weight'],
      tensors['model.decoder.embed_tokens.weight'],
    )
  params: dict[str, Any] = {
    'embed': {'table': {'embedding': source}},
    'encoder': {
      'layers': {
        i: _layer_params(tensors, f'model.encoder.layers.{i}', heads, False)
        for i in range(config.num_encoder_layers)
      }
    },
    'decoder': {
      'layers': {
        i: _layer_params(tensors, f'model.decoder.layers.{i}', heads, True)
        for i in range(config.num_decoder_layers)
      }
    },
    'logits_bias': tensors.get('final_logits_bias', np.zeros((1, config.target_vocabulary)))[0],
  }
  if not config.share_embeddings:
    params['target_embed'] = {'table': {'embedding': target}}
  return params


def load(directory: str, *, dtype: str = 'float32') -> tuple[Transformer, MarianTokenizer]:
  """A Marian (opus-mt) directory as this package's Transformer (eval mode) and its tokenizer."""
  config = config_from_marian(read_config(directory), dtype)
  graphdef, abstract, rest = abstract_model(config)
  values = params_from_marian(_read_weights(directory), config)
  _check_shapes(nnx.to_pure_dict(abstract), values)
  nnx.replace_by_pure_dict(abstract, values)
  model = nnx.merge(graphdef, abstract, rest)
  model.eval()
  tokenizer = MarianTokenizer(
    directory, pad_id=config.pad_id, eos_id=config.eos_id, bos_id=config.bos_id
  )
  return model, tokenizer


def _check_shapes(expected: dict, values: dict, path: str = '') -> None:
  """Raises MarianError naming the first parameter whose shape does not fit the model."""
  for key, want in expected.items():
    if key not in values:
      raise MarianError(f'no weights for {path}{key}')
    if isinstance(want, dict):
      _check_shapes(want, values[key], f'{path}{key}.')
    elif tuple(np.shape(values[key])) != tuple(want.shape):
      raise MarianError(
        f'{path}{key}: {np.shape(values[key])} in the checkpoint, {tuple(want.shape)} in the model'
      )


def unexpressible(config: TransformerConfig) -> str | None:
  """Why Marian cannot express `config`, or None."""
  if config.norm_position != 'post':
    return "norm_position='pre': Marian's layers are post-LN, without a final LayerNorm"
  if config.positional_encoding != 'sinusoidal':
    return "positional_encoding='learned': Marian's positions are fixed sinusoids"
  if not config.decoder_causal_mask:
    return "decoder_causal_mask=False: Marian's decoder always masks future positions"
  return None


# Where each parameter holds the model's feature axis (d_model), by the last two path names.
_FEATURE_AXIS = {
  ('table', 'embedding'): 1,
  ('norm', 'scale'): 0,
  ('norm', 'bias'): 0,
  ('w_1', 'kernel'): 0,
  ('w_2', 'kernel'): 1,
  ('w_2', 'bias'): 0,
  ('self_attention', 'w_qkv'): 0,
  ('cross_attention', 'w_q'): 0,
  ('cross_attention', 'w_kv'): 0,
  ('self_attention', 'w_o'): 2,
  ('cross_attention', 'w_o'): 2,
  ('self_attention', 'b_o'): 0,
  ('cross_attention', 'b_o'): 0,
}


def _permute_features(tree: dict, order: np.ndarray, parent: str = '') -> dict:
  """The same model with its features reordered: the residual stream's feature j becomes
  `order[j]` everywhere (embeddings, projections, LayerNorms), which computes the same function
  with the positional table's columns reordered alike."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out[key] = _permute_features(value, order, str(key))
    else:
      axis = _FEATURE_AXIS.get((parent, str(key)))
      out[key] = (
        np.take(np.asarray(value), order, axis=axis) if axis is not None else np.asarray(value)
      )
  return out


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
  tensors = _attention_tensors(layer['self_attention'], f'{prefix}.self_attn', d_model)
  names = {'self_attention_norm': 'self_attn_layer_norm', 'feed_forward_norm': 'final_layer_norm'}
  if 'cross_attention' in layer:
    tensors.update(_attention_tensors(layer['cross_attention'], f'{prefix}.encoder_attn', d_model))
    names['cross_attention_norm'] = 'encoder_attn_layer_norm'
  for ours, theirs in names.items():
    tensors[f'{prefix}.{theirs}.weight'] = layer[ours]['norm']['scale']
    tensors[f'{prefix}.{theirs}.bias'] = layer[ours]['norm']['bias']
  for fc, w in (('fc1', 'w_1'), ('fc2', 'w_2')):
    tensors[f'{prefix}.{fc}.weight'] = layer['feed_forward'][w]['kernel'].T
    tensors[f'{prefix}.{fc}.bias'] = layer['feed_forward'][w]['bias']
  return tensors


def marian_tensors(params: dict, config: TransformerConfig) -> dict[str, np.ndarray]:
  """A MarianMTModel state dict from our parameter tree (nested dicts)."""
  d = config.d_model
  tensors: dict[str, np.ndarray] = {}
  for side, count in (
    ('encoder', config.num_encoder_layers),
    ('decoder', config.num_decoder_layers),
  ):
    for i in range(count):
      tensors.update(_layer_tensors(params[side]['layers'][i], f'model.{side}.layers.{i}', d))
  source = params['embed']['table']['embedding']
  if config.share_embeddings:
    tensors['model.shared.weight'] = source
  else:
    tensors['model.encoder.embed_tokens.weight'] = source
    tensors['model.decoder.embed_tokens.weight'] = params['target_embed']['table']['embedding']
  bias = params.get('logits_bias', np.zeros(config.target_vocabulary, np.float32))
  tensors['final_logits_bias'] = np.asarray(bias).reshape(1, -1)
  return {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}


def marian_config(config: TransformerConfig) -> dict[str, Any]:
  """The `config.json` of a MarianMTModel computing what `config` computes."""
  return {
    'model_type': 'marian',
    'architectures': ['MarianMTModel'],
    'is_encoder_decoder': True,
    'vocab_size': config.vocab_size,
    'decoder_vocab_size': config.target_vocabulary,
    'share_encoder_decoder_embeddings': config.share_embeddings,
    'tie_word_embeddings': True,
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
    'static_position_embeddings': True,
    'dropout': config.dropout_rate,
    'attention_dropout': config.attention_dropout_rate,
    'activation_dropout': config.relu_dropout_rate,
    'pad_token_id': config.pad_id,
    'eos_token_id': config.eos_id,
    'decoder_start_token_id': config.bos_id,
    'forced_eos_token_id': config.eos_id,
  }


def save(model: Transformer, tokenizer, directory: str) -> None:
  """Writes `model` and its tokenizer as a Hugging Face Marian directory (config.json,
  model.safetensors, generation_config.json, source.spm, target.spm, vocab.json and
  tokenizer_config.json), which `MarianMTModel.from_pretrained` and `MarianTokenizer.from_pretrained`
  read. Interleaved sinusoids are converted exactly by reordering the model's features.

  Raises:
    MarianError: the model has an option Marian cannot express (named in the message).
  """
  from safetensors.numpy import save_file

  config = model.config
  problem = unexpressible(config)
  if problem:
    raise MarianError(f'Marian cannot express this model: {problem}')
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  params = jax_to_numpy(params)
  if (
    config.sinusoid_layout == 'interleaved'
  ):  # halves = the interleaved table's even, then odd columns
    params = _permute_features(
      params, np.concatenate([np.arange(0, config.d_model, 2), np.arange(1, config.d_model, 2)])
    )
  os.makedirs(directory, exist_ok=True)
  save_file(
    marian_tensors(params, config),
    os.path.join(directory, 'model.safetensors'),
    metadata={'format': 'pt'},
  )
  hf = marian_config(config)
  _write_json(os.path.join(directory, 'config.json'), hf)
  generation = {
    key: hf[key]
    for key in ('decoder_start_token_id', 'eos_token_id', 'pad_token_id', 'forced_eos_token_id')
  }
  generation.update(bad_words_ids=[[config.pad_id]], num_beams=4, max_length=config.max_positions)
  _write_json(os.path.join(directory, 'generation_config.json'), generation)
  _save_tokenizer(tokenizer, directory, config)


def jax_to_numpy(tree: dict) -> dict:
  return {k: jax_to_numpy(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}


def _write_json(path: str, value: Any) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=2)


def _save_tokenizer(tokenizer, directory: str, config: TransformerConfig) -> None:
  """Marian's tokenizer files: copied from a Marian tokenizer, or made from this package's joint
  SentencePiece model (both sides use it; vocab.json maps its pieces to its own ids)."""
  if isinstance(tokenizer, MarianTokenizer):
    for name in (
      'source.spm',
      'target.spm',
      'vocab.json',
      'target_vocab.json',
      'tokenizer_config.json',
    ):
      source = os.path.join(tokenizer.path, name)
      if os.path.exists(source) and os.path.abspath(source) != os.path.abspath(
        os.path.join(directory, name)
      ):
        shutil.copyfile(source, os.path.join(directory, name))
    return
  processor = tokenizer.processor
  for name in ('source.spm', 'target.spm'):
    shutil.copyfile(tokenizer.path, os.path.join(directory, name))
  _write_json(
    os.path.join(directory, 'vocab.json'),
    {processor.id_to_piece(i): i for i in range(processor.vocab_size())},
  )
  _write_json(
    os.path.join(directory, 'tokenizer_config.json'),
    {
      'tokenizer_class': 'MarianTokenizer',
      'unk_token': processor.id_to_piece(processor.unk_id()),
      'eos_token': processor.id_to_piece(config.eos_id),
      'pad_token': processor.id_to_piece(config.pad_id),
      'model_max_length': config.max_positions,
      'separate_vocabs': False,
    },
  )
