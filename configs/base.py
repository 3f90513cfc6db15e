"""Transformer (base) of the paper on WMT'14 English -> German (tfds wmt14_translate/de-en).

Paper: 100k steps of ~25k source + ~25k target tokens, Adam(0.9, 0.98, 1e-9), 4000 warm-up
steps, label smoothing 0.1, dropout 0.1. A step here is `batch_size` packed rows of 256 tokens
(per side): 96 rows × 256 ≈ 24.6k tokens per side, reached by gradient accumulation where devices
are few (e.g. 8 GPUs: 12 rows each; 1 GPU: --config.grad_accum_steps=4).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'wmt14_translate/de-en'
  config.source_lang = 'en'
  config.target_lang = 'de'
  config.train_split = 'train'
  config.eval_split = 'validation'  # newstest2013
  config.test_split = 'test'  # newstest2014
  config.vocab_size = 37000  # shared source-target vocabulary (paper: 37k BPE)
  config.max_epochs = None  # the paper's 100k steps, however many passes that is
  config.character_coverage = 0.9999
  config.max_length = 256
  config.model.update(
    dict(
      d_model=512,
      num_heads=8,
      d_ff=2048,
      num_encoder_layers=6,
      num_decoder_layers=6,
      dropout_rate=0.1,
      norm_position='post',
      max_positions=512,
    )
  )
  config.batch_size = 96
  config.num_train_steps = 100_000
  config.max_train_minutes = None
  config.lr_schedule = 'rsqrt'  # the paper's
  config.warmup_steps = 4000
  config.learning_rate_scale = 1.0
  config.eval_every = 5000
  config.checkpoint_every = 2000  # the paper: every 10 minutes
  config.average_last = 5  # the paper averages the last 5 checkpoints (base)
  config.keep_checkpoints = 5
  config.bleu_sentences = None
  config.eval_beam_size = 4
  config.test_beam_sizes = (4,)
  config.decode_batch_size = 128
  return config
