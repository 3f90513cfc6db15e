"""Checkpoints: what a restore verifies, what it falls back past, what it refuses."""

import os

import numpy as np

from transformer import checkpoints
from transformer.training import TrainState


def _state(value: float) -> TrainState:
  return TrainState(
    step=np.int32(value),
    params={'w': np.full((64, 64), value, np.float32)},
    opt_state={'m': np.zeros(3, np.float32)},
    rng=np.zeros(2, np.uint32),
  )


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  workdir = str(tmp_path)
  ckpt = checkpoints.Checkpointer(workdir, keep=3, keep_best=False)
  for step in (1, 2):
    ckpt.save(step, _state(float(step)), force=True)
  ckpt.wait()
  ckpt.close()
  state_dir = os.path.join(workdir, 'checkpoints', '2', 'params')
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name not in ('commit_success.txt',):
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(7)  # a torn write
  reader = checkpoints.Checkpointer(workdir, keep=3, keep_best=False)
  with caplog.at_level('WARNING'):
    restored = reader.restore(_state(0.0))
  reader.close()
  assert restored.step == 1 and float(restored.state.params['w'][0, 0]) == 1.0
  assert 'checkpoint 2' in caplog.text and 'cannot be restored' in caplog.text
