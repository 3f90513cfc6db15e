"""The special token ids of the vocabularies this package trains, defined once.

SentencePiece models made by `transformer.input_pipeline.tokenizer.train_tokenizer` reserve
PAD 0, BOS 1, EOS 2 and UNK 3; `TransformerConfig` takes PAD, BOS and EOS from here as its
defaults, and the input pipeline pads with the tokenizer's `pad_id`. Models with another layout
(e.g. Marian's: EOS 0, PAD last, decoder start = PAD) set their own ids in `TransformerConfig`.
"""

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3


def end_ids(tokenizer, side: str, eos_id: int) -> list[int]:
  """The ids that end an example on `side`: the tokenizer's `end_ids(side)` where it has one
  (e.g. `</s> [language]` on a legacy NLLB source), else `[eos_id]`."""
  method = getattr(tokenizer, 'end_ids', None)
  return list(method(side)) if method is not None else [eos_id]
