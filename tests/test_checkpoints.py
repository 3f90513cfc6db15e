"""Checkpoints: what a restore verifies, what it falls back past, what it refuses."""

import json
import os

import jax
import numpy as np
import pytest

from transformer.training import checkpoints, loop as train_loop
from transformer.training.steps import TrainState


def _state(value: float) -> TrainState:
  """A small train state whose parameters are `value` plus noise (incompressible bytes)."""
  noise = np.random.default_rng(0).uniform(0, 0.5, (64, 64)).astype(np.float32)
  return TrainState(
    step=np.int32(value),
    params={'w': np.float32(value) + noise},
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
  assert restored.step == 1 and np.array_equal(restored.state.params['w'], _state(1.0).params['w'])
  assert 'checkpoint 2' in caplog.text and 'cannot be restored' in caplog.text


def _save(workdir: str, steps, value=None, **kwargs) -> None:
  ckpt = checkpoints.Checkpointer(workdir, keep=5, keep_best=False)
  for step in steps:
    ckpt.save(step, _state(float(step if value is None else value)), force=True, **kwargs)
  ckpt.wait()
  ckpt.close()


def _array_files(folder: str) -> list[str]:
  """The files holding array bytes (Orbax's OCDBT data files) under `folder`."""
  found = []
  for root, _, files in os.walk(folder):
    found += [os.path.join(root, n) for n in files if os.path.getsize(os.path.join(root, n)) > 4000]
  return found


def test_flipped_bytes_fail_the_checksum_and_the_checkpoint_is_moved_aside(tmp_path, caplog):
  """Damaged data that still parses (a flipped run of bytes) must not restore as NaN or junk."""
  workdir = str(tmp_path)
  _save(workdir, (1, 2))
  files = _array_files(os.path.join(workdir, 'checkpoints', '2', 'params'))
  assert files, 'no array file found to damage'
  for path in files:
    with open(path, 'r+b') as f:
      data = bytearray(f.read())
      middle = len(data) // 2
      data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
      f.seek(0)
      f.write(data)
  reader = checkpoints.Checkpointer(workdir, keep=5, keep_best=False)
  with caplog.at_level('WARNING'):
    restored = reader.restore(_state(0.0))
  assert restored.step == 1 and np.array_equal(restored.state.params['w'], _state(1.0).params['w'])
  assert 'checkpoint 2' in caplog.text
  # Moved aside for inspection, so that step 2 can be saved again.
  assert reader.all_steps() == [1]
  assert os.listdir(os.path.join(workdir, 'damaged')) == ['checkpoints-2']
  reader.save(2, _state(2.0), force=True)
  reader.wait()
  assert reader.all_steps() == [1, 2]
  assert reader.restore(_state(0.0)).step == 2
  reader.close()


def test_an_array_that_fails_its_checksum_is_damage(tmp_path, caplog):
  """Bytes that still decode but are not what was saved: only the CRC-32 can tell."""
  workdir = str(tmp_path)
  _save(workdir, (1, 2))
  manifest = os.path.join(workdir, 'checkpoints', '2', 'manifest', 'metadata')
  contents = json.load(open(manifest))
  contents['params']["['w']"][2] ^= 1  # the array on disk no longer matches its checksum
  json.dump(contents, open(manifest, 'w'))
  reader = checkpoints.Checkpointer(workdir, keep=5, keep_best=False)
  with caplog.at_level('WARNING'):
    assert reader.restore(_state(0.0)).step == 1
  reader.close()
  assert "params['w'] fails its checksum" in caplog.text


def _crc32s(tree) -> dict[str, int]:
  """What manifests before `checkpoints.CHECKSUM` recorded: each whole array's CRC-32."""
  return {
    jax.tree_util.keystr(path): checkpoints._crc32(np.asarray(leaf))
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def test_a_manifest_of_crc32s_from_before_the_layout_free_checksum_is_still_verified(
  tmp_path, caplog
):
  workdir = str(tmp_path)
  _save(workdir, (1, 2))
  for step, flip in ((1, 0), (2, 1)):  # checkpoint 2's CRC of params['w'] is wrong
    path = os.path.join(workdir, 'checkpoints', str(step), 'manifest', 'metadata')
    contents = json.load(open(path))
    del contents['checksum']
    state = _state(float(step))
    for part, tree in (('params', state.params), ('train', checkpoints._train_part(state))):
      for name, crc in _crc32s(tree).items():
        contents[part][name][2] = crc ^ (flip if name == "['w']" else 0)
    json.dump(contents, open(path, 'w'))
  reader = checkpoints.Checkpointer(workdir, keep=5, keep_best=False)
  with caplog.at_level('WARNING'):
    restored = reader.restore(_state(0.0))
  reader.close()
  assert restored.step == 1 and "params['w'] fails its checksum" in caplog.text
  np.testing.assert_array_equal(restored.state.params['w'], _state(1.0).params['w'])


def test_a_checkpoint_written_by_orbaxs_standard_handler_still_restores(tmp_path, monkeypatch):
  """Checkpoints before the sharded restore were written with `StandardSave`."""
  import orbax.checkpoint as ocp

  workdir = str(tmp_path)
  with monkeypatch.context() as patch:
    patch.setattr(ocp.args, 'PyTreeSave', ocp.args.StandardSave)
    _save(workdir, (1,))
  handlers = json.load(open(os.path.join(workdir, 'checkpoints', '1', '_CHECKPOINT_METADATA')))
  assert 'StandardCheckpointHandler' in json.dumps(handlers)
  reader = checkpoints.Checkpointer(workdir, keep_best=False)
  restored = reader.restore(_state(0.0))
  reader.close()
  np.testing.assert_array_equal(restored.state.params['w'], _state(1.0).params['w'])


def test_a_checkpoint_of_another_shape_is_refused_naming_the_leaf(tmp_path):
  workdir = str(tmp_path)
  _save(workdir, (1,))
  other = _state(0.0).replace(params={'w': np.zeros((64, 32), np.float32)})
  reader = checkpoints.Checkpointer(workdir, keep_best=False)
  with pytest.raises(
    checkpoints.CheckpointMismatch,
    match=r"params\['w'\] is \(64, 64\) float32 in the checkpoint, \(64, 32\) float32 in the model",
  ):
    reader.restore(other)
  extra = _state(0.0).replace(
    params={'w': np.zeros((64, 64), np.float32), 'b': np.zeros(3, np.float32)}
  )
  with pytest.raises(
    checkpoints.CheckpointMismatch, match=r"params\['b'\] is in the model but not in the checkpoint"
  ):
    reader.restore(extra)
  # Refused, not damaged: nothing is moved aside.
  assert reader.all_steps() == [1] and not os.path.exists(os.path.join(workdir, 'damaged'))
  reader.close()


def test_another_optimizer_state_is_named_as_a_config_change(tmp_path):
  workdir = str(tmp_path)
  _save(workdir, (1,))
  clipped = _state(0.0).replace(
    opt_state=({'count': np.zeros((), np.int32)}, {'m': np.zeros(3, np.float32)})
  )
  reader = checkpoints.Checkpointer(workdir, keep_best=False)
  with pytest.raises(checkpoints.CheckpointMismatch, match='the config changes the optimizer'):
    reader.restore(clipped)
  # The parameters alone still restore (inference needs no optimizer).
  params = reader.restore_params(_state(0.0).params)
  assert params.step == 1 and np.array_equal(params.state['w'], _state(1.0).params['w'])
  reader.close()


def test_the_best_checkpoint_survives_a_restart(tmp_path):
  """The loop's Progress decides what is best; the checkpointer keeps it across a restart."""
  workdir = str(tmp_path)
  first, progress = checkpoints.Checkpointer(workdir, keep=5), train_loop.Progress(0)
  for step, bleu in ((1, 5.0), (2, 3.0)):
    record = checkpoints.Record(bleu=bleu)
    first.save(
      step, _state(float(step)), record=record, best=progress.validated({'eval_bleu': bleu})
    )
  first.wait()
  first.close()
  resumed = checkpoints.Checkpointer(workdir, keep=5)
  progress = train_loop.Progress(2, best_bleu=resumed.best_bleu())
  assert progress.best_bleu == 5.0
  for step, bleu, best_step in ((3, 4.0, 1), (4, 7.0, 4)):  # 4.0 is worse than step 1's 5.0
    best = progress.validated({'eval_bleu': bleu})
    resumed.save(step, _state(float(step)), record=checkpoints.Record(bleu=bleu), best=best)
    resumed.wait()
    assert resumed.restore(_state(0.0), which='best').step == best_step
  resumed.close()


def test_reading_for_inference_creates_nothing(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  reader = checkpoints.Checkpointer(str(workdir), read_only=True)
  assert reader.restore_params(_state(0.0).params) is None
  reader.close()
  assert os.listdir(workdir) == []


def test_evaluation_due_is_kept_with_the_checkpoint(tmp_path):
  record = checkpoints.Record(evaluation_due=True, loop_minutes=12.5, train_loss=2.25)
  _save(str(tmp_path), (3,), record=record)
  reader = checkpoints.Checkpointer(str(tmp_path), keep_best=False)
  assert reader.restore(_state(0.0)).record == record
  assert reader.restore_params(_state(0.0).params).record == record
  reader.close()
