"""A tiny opus-mt-shaped Marian model and tokenizer, built offline with transformers (test only).

Shaped like Helsinki-NLP/opus-mt-*: swish, a random final_logits_bias, static sinusoids, one
vocabulary (pad last, pad = decoder start, EOS 0), 2+2 layers; the tokenizer is a real
MarianTokenizer whose SentencePiece models are trained on the embedded corpus.
"""

import json
import os

import sentencepiece as spm

from tests.helpers import hf_bart_fixture, tiny_run


def _train_spm(path_prefix: str, sentences: list[str], vocab_size: int) -> str:
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(sentences),
    model_prefix=path_prefix,
    vocab_size=vocab_size,
    minloglevel=2,
    bos_id=-1,
    pad_id=-1,
  )
  return path_prefix + '.model'


def build(
  directory: str,
  *,
  shared: bool = True,
  seed: int = 0,
  eos_bias: float = 4.5,
  zero_pad_row: bool = False,
) -> str:
  """Writes a MarianMTModel directory (model, tokenizer) to `directory` and returns it.

  `zero_pad_row`: the pad token's embedding is zero, as in opus-mt models converted from Marian
  (whose decoder starts from a zero vector; CTranslate2's own converter assumes it)."""
  import torch
  from transformers import MarianConfig, MarianMTModel, MarianTokenizer

  os.makedirs(directory, exist_ok=True)
  pairs = tiny_run.embedded_pairs('train', 2000)
  source_spm = _train_spm(os.path.join(directory, 'src'), [s for s, _ in pairs], 300)
  target_spm = _train_spm(os.path.join(directory, 'tgt'), [t for _, t in pairs], 300)
  pieces = ['</s>', '<unk>']
  for path in (source_spm, target_spm):
    processor = spm.SentencePieceProcessor(model_file=path)
    pieces += [processor.id_to_piece(i) for i in range(processor.vocab_size())]
  vocab = {}
  for piece in pieces:
    vocab.setdefault(piece, len(vocab))
  vocab['<pad>'] = len(vocab)  # pad is the last id, as in opus-mt
  with open(os.path.join(directory, 'vocab.json'), 'w') as f:
    json.dump(vocab, f)
  tokenizer = MarianTokenizer(source_spm, target_spm, os.path.join(directory, 'vocab.json'))
  config = MarianConfig(
    vocab_size=len(vocab),
    decoder_vocab_size=len(vocab),
    **hf_bart_fixture.TINY_SIZES,
    activation_function='swish',
    pad_token_id=vocab['<pad>'],
    eos_token_id=0,
    decoder_start_token_id=vocab['<pad>'],
    forced_eos_token_id=0,  # as opus-mt: EOS at the last allowed step
    share_encoder_decoder_embeddings=shared,
    scale_embedding=True,
    dropout=0.1,
    attention_dropout=0.0,
    activation_dropout=0.0,
  )
  torch.manual_seed(seed)
  model = MarianMTModel(config)
  with torch.no_grad():
    model.final_logits_bias.normal_(0, 0.5)
    model.final_logits_bias[0, 0] = eos_bias  # EOS (id 0) likely enough that some beams end
    for name, parameter in model.named_parameters():  # larger than the default init: decisive tests
      if 'layer_norm' not in name:
        parameter.normal_(0, 0.3)
    if zero_pad_row:
      for embedding in (model.model.encoder.embed_tokens, model.model.decoder.embed_tokens):
        embedding.weight[vocab['<pad>']] = 0.0
  model.eval()
  model.save_pretrained(directory)
  tokenizer.save_pretrained(directory)
  return directory
