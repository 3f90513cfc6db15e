"""Translating with an exported directory (`python -m transformer.export --format=stablehlo`),
with jax and NumPy alone: this file is copied into the directory as serve.py and never imports
the `transformer` package.

    from serve import Translator
    translator = Translator('exported')
    translator.translate_ids([[45, 12, 9]], beam_size=4)   # source ids (no EOS) -> target ids
    translator.translate(['In the beginning'])              # text, with sentencepiece installed

    python serve.py exported [--beam_size=4] < input.txt > output.txt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import jax
import numpy as np

_LANGUAGE_CODE = re.compile(r'^>>.+?<<')


class Translator:
  """The artifacts of one exported directory, deserialized on first use."""

  def __init__(self, directory: str):
    self.directory = directory
    with open(os.path.join(directory, 'manifest.json'), encoding='utf-8') as f:
      self.manifest = json.load(f)
    stored = np.load(os.path.join(directory, self.manifest['params']))
    self.params = [stored[f'arr_{i}'] for i in range(len(stored.files))]
    self.ids = self.manifest['ids']
    self._loaded = {}

  def _artifact(self, beam_size: int, length: int) -> tuple[dict, object]:
    """The artifact of the smallest source length >= `length` for `beam_size`."""
    fitting = [
      a
      for a in self.manifest['artifacts']
      if a['beam_size'] == beam_size and a['source_length'] >= length
    ]
    if not fitting:
      raise ValueError(f'no artifact for beam_size={beam_size} and {length} source tokens')
    entry = min(fitting, key=lambda a: a['source_length'])
    if entry['file'] not in self._loaded:
      with open(os.path.join(self.directory, entry['file']), 'rb') as f:
        self._loaded[entry['file']] = jax.export.deserialize(bytearray(f.read()))
    return entry, self._loaded[entry['file']]

  def translate_ids(
    self, sources: list[list[int]], beam_size: int = 1, max_new_tokens: int | None = None
  ) -> list[list[int]]:
    """Source ids (without EOS) -> target ids (without EOS), decoded together."""
    cap = self.manifest['max_positions']
    with_eos = [list(ids)[: cap - 1] + [self.ids['eos']] for ids in sources]
    entry, exported = self._artifact(beam_size, max(len(ids) for ids in with_eos))
    src = np.full((len(with_eos), entry['source_length']), self.ids['pad'], np.int32)
    for row, ids in enumerate(with_eos):
      src[row, : len(ids)] = ids
    if max_new_tokens is None:
      limits = [min(len(ids) + self.manifest['extra_length'], cap) for ids in with_eos]
    else:
      limits = [max_new_tokens] * len(with_eos)
    limits = np.minimum(np.asarray(limits, np.int32), entry['output_length'])
    tokens, _ = exported.call(self.params, src, limits)
    return [_until_eos(row, self.ids['eos']) for row in np.asarray(tokens)]

  def translate(self, sentences: list[str], beam_size: int = 1, batch_size: int = 32) -> list[str]:
    """Text -> text with the directory's SentencePiece model(s) (needs `sentencepiece`), in
    batches of similar length; an empty line gives an empty line."""
    import sentencepiece as spm

    names = self.manifest['tokenizer']
    source = spm.SentencePieceProcessor(model_file=os.path.join(self.directory, names['source']))
    target = spm.SentencePieceProcessor(model_file=os.path.join(self.directory, names['target']))
    vocab, target_vocab = self._vocab('vocab.json'), self._vocab('target_vocab.json')
    target_vocab = target_vocab or vocab
    pieces = {i: p for p, i in target_vocab.items()} if target_vocab else None
    encoded = [_encode(source, vocab, s) if s.strip() else None for s in sentences]
    order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
    outputs = [''] * len(sentences)
    for start in range(0, len(order), batch_size):
      chunk = order[start : start + batch_size]
      results = self.translate_ids([encoded[i] for i in chunk], beam_size=beam_size)
      for i, ids in zip(chunk, results):
        outputs[i] = _decode(target, pieces, ids, self.ids)
    return outputs

  def _vocab(self, name: str) -> dict[str, int] | None:
    """A Marian model's piece -> id map (vocab.json, target_vocab.json), or None where the ids
    are SentencePiece's."""
    path = os.path.join(self.directory, name)
    if not os.path.exists(path):
      return None
    with open(path, encoding='utf-8') as f:
      return json.load(f)


def _until_eos(row: np.ndarray, eos: int) -> list[int]:
  ids = row.tolist()
  return ids[: ids.index(eos)] if eos in ids else ids


def _encode(processor, vocab: dict[str, int] | None, text: str) -> list[int]:
  """SentencePiece ids, or (Marian) pieces through vocab.json, a leading >>lang<< code as one."""
  if vocab is None:
    return processor.encode(text)
  code = _LANGUAGE_CODE.match(text)
  pieces = [code.group(0)] if code else []
  pieces += processor.encode(text[code.end() :] if code else text, out_type=str)
  return [vocab.get(piece, vocab['<unk>']) for piece in pieces]


def _decode(processor, pieces: dict[int, str] | None, ids: list[int], special: dict) -> str:
  """As the package's tokenizers decode: pad and BOS skipped (and, for Marian, unknown ids)."""
  ids = [i for i in ids if i not in (special['pad'], special['bos'])]
  if pieces is None:
    return processor.decode(ids)
  kept = [pieces[i] for i in ids if i in pieces and pieces[i] != '<unk>']
  return processor.decode_pieces(kept).replace('\u2581', ' ').strip()


def main() -> int:
  parser = argparse.ArgumentParser(description='Translate stdin with an exported directory.')
  parser.add_argument('directory')
  parser.add_argument('--beam_size', type=int, default=1)
  args = parser.parse_args()
  translator = Translator(args.directory)
  lines = sys.stdin.read().splitlines()
  for line in translator.translate(lines, beam_size=args.beam_size):
    print(line)
  return 0


if __name__ == '__main__':
  sys.exit(main())
