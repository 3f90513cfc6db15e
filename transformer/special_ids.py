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
