"""Tiny NLLB- and M2M100-shaped models and tokenizers, built offline with transformers (test only).

Shaped like facebook/nllb-200-* and facebook/m2m100_*: pre-LN with final LayerNorms, fairseq
sinusoids from position pad + 1, ReLU, shared embeddings tied to the output, pad 1, EOS 2 as
the decoder start; 2+2 layers of width 16. The tokenizers are transformers' own
(`NllbTokenizer` with its 202 language codes, `M2M100Tokenizer` with its 100), over a
SentencePiece BPE model trained on the embedded corpus.
"""

import json
import os
import shutil

import sentencepiece as spm

from tests.helpers import hf_bart_fixture, tiny_run

SPM = 'sentencepiece.bpe.model'


def _train_spm(directory: str) -> str:
  pairs = tiny_run.embedded_pairs('train', 2000)
  prefix = os.path.join(directory, 'spm')
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter([s for pair in pairs for s in pair]),
    model_prefix=prefix,
    vocab_size=400,
    model_type='bpe',
    minloglevel=2,
  )
  return prefix + '.model'


def _tokenizer(kind: str, directory: str, model_file: str):
  from transformers import M2M100Tokenizer, NllbTokenizer
  from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

  if kind == 'nllb':
    shutil.copyfile(model_file, os.path.join(directory, SPM))
    return NllbTokenizer.from_pretrained(
      directory,
      src_lang='eng_Latn',
      tgt_lang='fra_Latn',
      extra_special_tokens=FAIRSEQ_LANGUAGE_CODES,
    )
  processor = spm.SentencePieceProcessor(model_file=model_file)
  vocab = {'<s>': 0, '<pad>': 1, '</s>': 2, '<unk>': 3}
  for i in range(3, processor.vocab_size()):
    vocab.setdefault(processor.id_to_piece(i), len(vocab))
  with open(os.path.join(directory, 'vocab.json'), 'w') as f:
    json.dump(vocab, f)
  return M2M100Tokenizer(
    os.path.join(directory, 'vocab.json'), model_file, src_lang='en', tgt_lang='fr'
  )


def build(directory: str, kind: str = 'nllb', *, seed: int = 0, eos_scale: float = 4.0) -> str:
  """Writes an M2M100ForConditionalGeneration directory (model and tokenizer) of `kind` 'nllb'
  or 'm2m100' to `directory` and returns it. `eos_scale` enlarges EOS's embedding, so that
  hypotheses end before the length limit."""
  import torch
  from transformers import M2M100Config, M2M100ForConditionalGeneration

  os.makedirs(directory, exist_ok=True)
  tokenizer = _tokenizer(kind, directory, _train_spm(directory))
  # Every token the tokenizer makes (M2M100's language tokens follow its vocabulary, then
  # num_madeup_words unused ids, as in facebook/m2m100_418M).
  ids = [*tokenizer.get_vocab().values(), *getattr(tokenizer, 'lang_code_to_id', {}).values()]
  vocab_size = max(ids) + 1 + getattr(tokenizer, 'num_madeup_words', 0)
  config = M2M100Config(
    vocab_size=vocab_size,
    **hf_bart_fixture.TINY_SIZES,
    activation_function='relu',
    scale_embedding=True,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    dropout=0.1,
    attention_dropout=0.0,
    activation_dropout=0.0,
  )
  torch.manual_seed(seed)
  model = M2M100ForConditionalGeneration(config)
  with torch.no_grad():
    for name, parameter in model.named_parameters():  # larger than the default init: decisive tests
      if 'layer_norm' not in name:
        parameter.normal_(0, 0.3)
    # Rows of one norm (the logits then depend on directions, so tokens vary), EOS's larger.
    table = model.model.shared.weight
    table /= table.norm(dim=1, keepdim=True)
    table[2] *= eos_scale
  model.eval()
  model.save_pretrained(directory)
  tokenizer.save_pretrained(directory)
  if kind == 'nllb':  # the hub's NLLB directories carry the SentencePiece model too
    shutil.copyfile(os.path.join(directory, 'spm.model'), os.path.join(directory, SPM))
  return directory
