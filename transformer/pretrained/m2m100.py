"""Hugging Face M2M100 directories (NLLB-200, M2M100) <-> this package's `Transformer`.

    from transformer.pretrained import m2m100
    model, tokenizer = m2m100.load('nllb-200-distilled-600M', source_lang='eng_Latn',
                                   target_lang='fra_Latn')
    translate(model, tokenizer, ['How are you?'])             # the target language forced first
    translate(model, tokenizer.with_languages('eng_Latn', 'deu_Latn'), ['How are you?'])

An M2M100 model is this package's Transformer with pre-LN blocks and a final LayerNorm on both
stacks, fairseq's sinusoids (halves, frequencies exp(-i·ln(10000)/(d/2-1)), positions starting
at pad_id + 1), biases on q/k/v/o (the key bias cancels in the softmax: dropped, see
`transformer.pretrained.hf_bart`), embeddings × √d_model, ReLU, LayerNorm ε 1e-5, one shared vocabulary
tied to the output, and the decoder starting with EOS. Weights are read by `hf_bart` (sharded
safetensors, tensor by tensor), optionally straight into bfloat16.

The tokenizer (`M2M100Tokenizer`) splits text with the directory's SentencePiece model and maps
pieces to fairseq's ids (NLLB: `<s> <pad> </s> <unk>` first, then the pieces shifted by one;
M2M100: `vocab.json`), with one token per language (`eng_Latn`, `__en__`). A source is
`[source language] tokens </s>` (NLLB's current convention; M2M100's), or, for an NLLB
tokenizer with `legacy_behaviour` (the argument, or tokenizer_config.json's field, as for
transformers' `NllbTokenizer`), `tokens </s> [source language]`. The target is always
`[target language] tokens </s>`: the target language is forced as the first generated token,
as `generate(forced_bos_token_id=...)` does, in either convention.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Callable, Iterable, Sequence

import sentencepiece as spm

from transformer import _atomic
from transformer.model.encoder_decoder import Transformer, TransformerConfig
from transformer.model.params import numpy_params
from transformer.pretrained import hf_bart

SENTENCEPIECE = 'sentencepiece.bpe.model'
# M2M100's language codes (fairseq's order: the token of code i is `__code__`, id
# len(vocab.json) + i), by the `language_codes` its tokenizer_config.json names.
M2M100_LANGUAGES = {
  'm2m100': (
    'af am ar ast az ba be bg bn br bs ca ceb cs cy da de el en es et fa ff fi fr fy ga gd gl gu '
    'ha he hi hr ht hu hy id ig ilo is it ja jv ka kk km kn ko lb lg ln lo lt lv mg mk ml mn mr ms '
    'my ne nl no ns oc or pa pl ps pt ro ru sd si sk sl so sq sr ss su sv sw ta th tl tn tr uk ur '
    'uz vi wo xh yi yo zh zu'
  ).split(),
  'wmt21': 'en ha is ja cs ru zh de'.split(),
}
_LANGUAGE = re.compile(r'^([a-z]{3}_[A-Z][a-z]{3}|__[a-z]{2,3}(_[a-zA-Z]+)?__)$')


class M2M100Error(hf_bart.HuggingFaceError):
  """A directory that is not an M2M100/NLLB model this package can load, or a bad language."""


def read_config(directory: str) -> dict[str, Any]:
  """The directory's config.json, which must be an M2M100 model's."""
  hf = hf_bart.read_config(directory)
  if hf.get('model_type') != 'm2m_100':
    raise M2M100Error(
      f'{os.path.join(directory, "config.json")}: model_type {hf.get("model_type")!r} is not '
      "'m2m_100'"
    )
  return hf


def config_from_m2m100(
  hf: dict[str, Any], dtype: str = 'float32', param_dtype: str = 'float32'
) -> TransformerConfig:
  """The TransformerConfig of an M2M100 `config.json`."""
  pad = hf.get('pad_token_id', 1)
  return TransformerConfig(
    **hf_bart.shared_config(hf, default_activation='relu'),
    max_positions=hf.get('max_position_embeddings', 1024),
    norm_position='pre',
    dtype=dtype,
    param_dtype=param_dtype,
    pad_id=pad,
    bos_id=hf.get('decoder_start_token_id', hf.get('eos_token_id', 2)),
    eos_id=hf.get('eos_token_id', 2),
    sinusoid_layout='fairseq',
    position_offset=pad + 1,
    layer_norm_epsilon=1e-5,
    logits_bias=False,
  )


def m2m100_config(config: TransformerConfig) -> dict[str, Any]:
  """The `config.json` of an M2M100ForConditionalGeneration computing what `config` computes."""
  return {
    'model_type': 'm2m_100',
    'architectures': ['M2M100ForConditionalGeneration'],
    **hf_bart.shared_hf_config(config),
    'bos_token_id': 0,
    'tie_word_embeddings': True,
  }


def unexpressible(config: TransformerConfig) -> str | None:
  """Why an M2M100 model cannot compute what `config` computes, or None."""
  expected = {
    'norm_position': 'pre',
    'sinusoid_layout': 'fairseq',
    'positional_encoding': 'sinusoidal',
    'position_offset': config.pad_id + 1,
    'layer_norm_epsilon': 1e-5,
    'logits_bias': False,
    'share_embeddings': True,
    'decoder_causal_mask': True,
  }
  differing = [
    f'{k}={getattr(config, k)!r}' for k, v in expected.items() if getattr(config, k) != v
  ]
  return ', '.join(differing) + f' (M2M100 has {expected})' if differing else None


class M2M100Tokenizer:
  """Text <-> ids as transformers' `NllbTokenizer` and `M2M100Tokenizer` make them, for one
  language pair (`with_languages` gives another).

  The interface of `transformer.input_pipeline.tokenizer.Tokenizer`: `encode(text, side)` (the
  source language's token first on the source side, the target language's on the target side;
  no EOS; with `legacy_behaviour`, no source language either), `end_ids(side)` (what follows:
  `</s>`, or `</s> [source language]` on a legacy source), `decode`, `pieces`, `vocab_size`,
  `pad_id`, `special_ids`, `loader`; and `forced_bos_id`, the target language's token that
  decoding starts with.
  """

  def __init__(
    self,
    directory: str,
    source_lang: str,
    target_lang: str,
    legacy_behaviour: bool | None = None,
  ):
    self.path = directory
    model = os.path.join(directory, SENTENCEPIECE)
    if not os.path.exists(model):
      raise M2M100Error(f'{model}: missing (an M2M100/NLLB tokenizer needs {SENTENCEPIECE})')
    self.processor = spm.SentencePieceProcessor(model_file=model)
    self.vocab = _piece_ids(directory, self.processor)
    self.languages = _language_ids(directory, self.vocab)
    self.source_lang = self._checked(source_lang)
    self.target_lang = self._checked(target_lang)
    self.legacy_behaviour = _legacy_behaviour(directory, legacy_behaviour)
    self._pieces = {i: piece for piece, i in {**self.vocab, **self.languages}.items()}
    self._special = {0, 1, 2, *self.languages.values()}

  def _checked(self, language: str) -> str:
    if language in self.languages:
      return language
    nearest = sorted(self.languages, key=lambda code: _distance(code.lower(), language.lower()))
    raise M2M100Error(
      f"language {language!r} is not one of the model's {len(self.languages)} codes; the nearest: "
      + ', '.join(nearest[:5])
    )

  def with_languages(self, source_lang: str, target_lang: str) -> 'M2M100Tokenizer':
    return load_tokenizer(self.path, source_lang, target_lang, self.legacy_behaviour)

  @property
  def vocab_size(self) -> int:
    return max(self._pieces) + 1

  @property
  def pad_id(self) -> int:
    return 1

  @property
  def special_ids(self) -> dict[str, int]:
    return {'pad_id': 1, 'bos_id': 2, 'eos_id': 2}

  @property
  def forced_bos_id(self) -> int:
    return self.languages[self.target_lang]

  @property
  def loader(self) -> Callable[[], 'M2M100Tokenizer']:
    """A picklable function that loads this tokenizer again (in another process)."""
    return functools.partial(
      load_tokenizer, self.path, self.source_lang, self.target_lang, self.legacy_behaviour
    )

  def encode(self, text: str, side: str = 'source') -> list[int]:
    """`[language] ids` of `text` (without EOS), the language of `side`; a legacy source
    without its language (`end_ids` adds it after EOS)."""
    unknown = self.vocab['<unk>']
    ids = [self.vocab.get(piece, unknown) for piece in self.processor.encode(text, out_type=str)]
    if side == 'source' and self.legacy_behaviour:
      return ids
    language = self.source_lang if side == 'source' else self.target_lang
    return [self.languages[language]] + ids

  def end_ids(self, side: str = 'source') -> list[int]:
    """The ids that follow `encode(text, side)`: `[</s>]`, `[</s>, source language]` on a
    legacy source."""
    if side == 'source' and self.legacy_behaviour:
      return [2, self.languages[self.source_lang]]
    return [2]

  def encode_batch(self, texts: Sequence[str], side: str = 'source') -> list[list[int]]:
    return [self.encode(text, side) for text in texts]

  def pieces(self, ids: Iterable[int], side: str = 'target') -> list[str]:
    return [self._pieces.get(int(i), '<unk>') for i in ids]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` up to the first EOS; special tokens and language codes are skipped."""
    kept = []
    for i in ids:
      i = int(i)
      if i == 2:
        break
      if i not in self._special and i in self._pieces:
        kept.append(self._pieces[i])
    return self.processor.decode_pieces(kept)


def _piece_ids(directory: str, processor: spm.SentencePieceProcessor) -> dict[str, int]:
  """Piece -> id: M2M100's `vocab.json`, or NLLB's fairseq layout (`<s> <pad> </s> <unk>`,
  then the SentencePiece pieces after its own three specials, shifted by one)."""
  vocab_file = os.path.join(directory, 'vocab.json')
  if os.path.exists(vocab_file):
    with open(vocab_file, encoding='utf-8') as f:
      return json.load(f)
  vocab = {'<s>': 0, '<pad>': 1, '</s>': 2, '<unk>': 3}
  for i in range(3, processor.vocab_size()):
    vocab.setdefault(processor.id_to_piece(i), i + 1)
  return vocab


def _language_ids(directory: str, vocab: dict[str, int]) -> dict[str, int]:
  """Language code -> id: the tokenizer's saved added tokens (tokenizer_config.json's
  `added_tokens_decoder`, tokenizer.json's `added_tokens`: NLLB), else M2M100's codes after
  `vocab.json` (the list its tokenizer_config.json's `language_codes` names)."""
  settings: dict[str, Any] = {}
  config_file = os.path.join(directory, 'tokenizer_config.json')
  if os.path.exists(config_file):
    with open(config_file, encoding='utf-8') as f:
      settings = json.load(f)
  added = settings.get('added_tokens_decoder') or {}
  found = {token['content']: int(i) for i, token in added.items()}
  tokenizer_file = os.path.join(directory, 'tokenizer.json')
  if not any(_LANGUAGE.match(t) for t in found) and os.path.exists(tokenizer_file):
    with open(tokenizer_file, encoding='utf-8') as f:
      found = {t['content']: t['id'] for t in json.load(f).get('added_tokens', [])}
  languages = {token: i for token, i in found.items() if _LANGUAGE.match(token)}
  codes = M2M100_LANGUAGES.get(settings.get('language_codes', 'm2m100'))
  if not languages and os.path.exists(os.path.join(directory, 'vocab.json')) and codes:
    languages = {f'__{code}__': len(vocab) + i for i, code in enumerate(codes)}
  if not languages:
    raise M2M100Error(
      f'{directory}: no language codes in tokenizer_config.json (added_tokens_decoder) or '
      'tokenizer.json (added_tokens)'
    )
  return languages


def _distance(a: str, b: str) -> int:
  """Levenshtein distance (to suggest the nearest language codes)."""
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, start=1):
    previous, row[0] = row[0], i
    for j, y in enumerate(b, start=1):
      previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
  return row[-1]


def _legacy_behaviour(directory: str, requested: bool | None) -> bool:
  """`requested`, else tokenizer_config.json's `legacy_behaviour` (default False); only NLLB
  tokenizers (no vocab.json) have the legacy convention."""
  if requested is None:
    config_file = os.path.join(directory, 'tokenizer_config.json')
    if os.path.exists(config_file):
      with open(config_file, encoding='utf-8') as f:
        requested = json.load(f).get('legacy_behaviour')
  if requested and os.path.exists(os.path.join(directory, 'vocab.json')):
    raise M2M100Error(
      f'{directory}: legacy_behaviour is an NLLB tokenizer option; M2M100 tokenizers have '
      'only `[source language] tokens </s>`'
    )
  return bool(requested)


def load_tokenizer(
  directory: str, source_lang: str, target_lang: str, legacy_behaviour: bool | None = None
) -> M2M100Tokenizer:
  return M2M100Tokenizer(directory, source_lang, target_lang, legacy_behaviour)


def load(
  directory: str,
  *,
  source_lang: str,
  target_lang: str,
  dtype: str = 'float32',
  param_dtype: str = 'float32',
  legacy_behaviour: bool | None = None,
) -> tuple[Transformer, M2M100Tokenizer]:
  """An M2M100/NLLB directory as this package's Transformer (eval mode) and its tokenizer for
  one language pair. `param_dtype='bfloat16'` loads the weights straight into bfloat16 (half
  the memory of float32); `legacy_behaviour` as `M2M100Tokenizer`'s."""
  config = config_from_m2m100(read_config(directory), dtype, param_dtype)
  # A bad language or option is reported before the weights are read.
  tokenizer = load_tokenizer(directory, source_lang, target_lang, legacy_behaviour)
  return hf_bart.load_model(hf_bart.StateDict(directory), config), tokenizer


def save(model: Transformer, tokenizer: M2M100Tokenizer, directory: str) -> None:
  """Writes `model` as an M2M100ForConditionalGeneration directory (config.json,
  model.safetensors, generation_config.json) with its tokenizer's files, which
  `from_pretrained` reads.

  Raises:
    M2M100Error: the model is not one an M2M100 model can express (named in the message).
  """
  from safetensors.numpy import save_file

  problem = unexpressible(model.config)
  if problem:
    raise M2M100Error(f'M2M100 cannot express this model: {problem}')
  os.makedirs(directory, exist_ok=True)
  params = numpy_params(model)
  tensors = hf_bart.state_dict(params, model.config)
  save_file(tensors, os.path.join(directory, hf_bart.SAFETENSORS), metadata={'format': 'pt'})
  hf = m2m100_config(model.config)
  _atomic.write_json(os.path.join(directory, 'config.json'), hf)
  generation = {k: hf[k] for k in ('bos_token_id', 'eos_token_id', 'pad_token_id')}
  generation.update(decoder_start_token_id=hf['decoder_start_token_id'], num_beams=4)
  _atomic.write_json(os.path.join(directory, 'generation_config.json'), generation)
  hf_bart.copy_files(tokenizer.path, directory, hf_bart.TOKENIZER_FILES)
