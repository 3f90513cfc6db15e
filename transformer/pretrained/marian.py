"""Hugging Face Marian (opus-mt) directories <-> this package's `Transformer`.

    from transformer.pretrained import marian
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

Weights are read as `transformer.pretrained.hf_bart` reads the BART family's (`model.safetensors`, sharded
or not, with NumPy; a `pytorch_model.bin` only with torch installed). The tokenizer is
`MarianTokenizer` below: `source.spm` splits the source, `target.spm` the target, `vocab.json`
maps pieces to ids (unknown pieces to `<unk>`), EOS is appended and no BOS. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm

from transformer import _atomic
from transformer.model.encoder_decoder import Transformer, TransformerConfig
from transformer.model.params import numpy_params
from transformer.pretrained import hf_bart

_LANGUAGE_CODE = re.compile(r'^>>.+?<<')


class MarianError(hf_bart.HuggingFaceError):
  """A directory that is not a Marian model this package can load, or a model Marian cannot express."""


class MarianTokenizer:
  """Text <-> ids as transformers' MarianTokenizer makes them (see the module docstring).

  The interface of `transformer.input_pipeline.tokenizer.Tokenizer`: `encode` (source side),
  `encode_batch(texts, side)`, `end_ids(side)` (EOS), `decode` (target side), `pieces(ids, side)`,
  `vocab_size`, `pad_id`, `special_ids`.
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
    self.id_to_piece = {
      side: {i: piece for piece, i in vocab.items()} for side, vocab in self.vocab.items()
    }
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

  def end_ids(self, side: str = 'source') -> list[int]:
    """The ids that follow `encode(text, side)` in an example: EOS."""
    return [self._ids['eos_id']]

  def encode_batch(self, texts: Sequence[str], side: str = 'source') -> list[list[int]]:
    return [self.encode(text, side) for text in texts]

  def pieces(self, ids: Iterable[int], side: str = 'target') -> list[str]:
    """The vocabulary entry of each id on one side ('<unk>' for an id it does not have)."""
    return [self.id_to_piece[side].get(int(i), '<unk>') for i in ids]

  def decode(self, ids: Iterable[int]) -> str:
    """Target text of `ids` up to the first EOS; pad and unknown ids are skipped."""
    pieces = []
    for i in ids:
      i = int(i)
      if i == self._ids['eos_id']:
        break
      if i not in (self._ids['pad_id'], self.unk_id['target']) and i in self.id_to_piece['target']:
        pieces.append(self.id_to_piece['target'][i])
    return self.spm['target'].decode_pieces(pieces).replace('\u2581', ' ').strip()


def read_config(directory: str) -> dict[str, Any]:
  """A Marian directory's config.json; MarianError, naming the file, for anything else."""
  try:
    hf = hf_bart.read_config(directory)
  except hf_bart.HuggingFaceError as e:
    raise MarianError(str(e)) from None
  if hf.get('model_type') not in (None, 'marian') or 'pad_token_id' not in hf:
    path = os.path.join(directory, 'config.json')
    raise MarianError(f"{path}: model_type {hf.get('model_type')!r} is not 'marian'")
  return hf


def generation_defaults(directory: str) -> dict[str, Any]:
  """A Marian directory's `hf_bart.generation_defaults` (MarianError for another model)."""
  read_config(directory)
  return hf_bart.generation_defaults(directory)


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
  try:
    fields = hf_bart.shared_config(hf, default_activation='swish')
  except hf_bart.HuggingFaceError as e:
    raise MarianError(str(e)) from None
  shared = hf.get('share_encoder_decoder_embeddings', True)
  return TransformerConfig(
    **fields,
    max_positions=hf.get('max_position_embeddings', 512),
    norm_position='post',
    dtype=dtype,
    pad_id=hf['pad_token_id'],
    bos_id=hf.get('decoder_start_token_id', hf['pad_token_id']),
    eos_id=hf['eos_token_id'],
    sinusoid_layout='halves',
    layer_norm_epsilon=1e-5,
    logits_bias=True,
    share_embeddings=shared,
    target_vocab_size=None if shared else hf.get('decoder_vocab_size') or hf['vocab_size'],
  )


def load(directory: str, *, dtype: str = 'float32') -> tuple[Transformer, MarianTokenizer]:
  """A Marian (opus-mt) directory as this package's Transformer (eval mode) and its tokenizer."""
  config = config_from_marian(read_config(directory), dtype)
  model = hf_bart.load_model(hf_bart.StateDict(directory), config)
  tokenizer = MarianTokenizer(
    directory, pad_id=config.pad_id, eos_id=config.eos_id, bos_id=config.bos_id
  )
  return model, tokenizer


def unexpressible(config: TransformerConfig) -> str | None:
  """Why Marian cannot express `config`, or None."""
  if config.norm_position != 'post':
    return "norm_position='pre': Marian's layers are post-LN, without a final LayerNorm"
  if config.positional_encoding != 'sinusoidal':
    return "positional_encoding='learned': Marian's positions are fixed sinusoids"
  if not config.decoder_causal_mask:
    return "decoder_causal_mask=False: Marian's decoder always masks future positions"
  if config.sinusoid_layout == 'fairseq' or config.position_offset:
    return "fairseq's sinusoids (M2M100, NLLB): Marian's start at position 0 with other frequencies"
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


def marian_config(config: TransformerConfig) -> dict[str, Any]:
  """The `config.json` of a MarianMTModel computing what `config` computes."""
  return {
    'model_type': 'marian',
    'architectures': ['MarianMTModel'],
    **hf_bart.shared_hf_config(config),
    'decoder_vocab_size': config.target_vocabulary,
    'share_encoder_decoder_embeddings': config.share_embeddings,
    'tie_word_embeddings': True,
    'static_position_embeddings': True,
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
  params = numpy_params(model)
  if (
    config.sinusoid_layout == 'interleaved'
  ):  # halves = the interleaved table's even, then odd columns
    params = _permute_features(
      params, np.concatenate([np.arange(0, config.d_model, 2), np.arange(1, config.d_model, 2)])
    )
  os.makedirs(directory, exist_ok=True)
  save_file(
    hf_bart.state_dict(params, config),
    os.path.join(directory, 'model.safetensors'),
    metadata={'format': 'pt'},
  )
  hf = marian_config(config)
  _atomic.write_json(os.path.join(directory, 'config.json'), hf)
  generation = {
    key: hf[key]
    for key in ('decoder_start_token_id', 'eos_token_id', 'pad_token_id', 'forced_eos_token_id')
  }
  generation.update(bad_words_ids=[[config.pad_id]], num_beams=4, max_length=config.max_positions)
  _atomic.write_json(os.path.join(directory, 'generation_config.json'), generation)
  _save_tokenizer(tokenizer, directory, config)


def _save_tokenizer(tokenizer, directory: str, config: TransformerConfig) -> None:
  """Marian's tokenizer files: copied from a Marian tokenizer, or made from this package's joint
  SentencePiece model (both sides use it; vocab.json maps its pieces to its own ids)."""
  if isinstance(tokenizer, MarianTokenizer):
    hf_bart.copy_files(tokenizer.path, directory, hf_bart.TOKENIZER_FILES)
    return
  processor = tokenizer.processor
  for name in ('source.spm', 'target.spm'):
    shutil.copyfile(tokenizer.path, os.path.join(directory, name))
  _atomic.write_json(
    os.path.join(directory, 'vocab.json'),
    {processor.id_to_piece(i): i for i in range(processor.vocab_size())},
  )
  _atomic.write_json(
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
