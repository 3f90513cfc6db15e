"""Transformer (big) of the paper on WMT'14 English -> German: d_model 1024, 16 heads, d_ff 4096,
dropout 0.3, 300k steps (same ~25k tokens per side per step as base.py)."""

from configs import base


def get_config():
  config = base.get_config()
  config.model.update(dict(d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3))
  config.num_train_steps = 300_000
  config.average_last = 20  # the paper averages the last 20 checkpoints (big)
  config.keep_checkpoints = 20
  return config
