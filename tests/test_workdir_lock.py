"""One run per workdir: the lock, its holder's line, abandoned locks taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from transformer.training import workdir_lock


def _write_lock(workdir, **fields):
  os.makedirs(workdir, exist_ok=True)
  holder = {
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'started': time.time(),
    'heartbeat': time.time(),
    'token': 'other',
  }
  holder.update(fields)
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), 'w') as f:
    json.dump(holder, f)


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
  workdir = str(tmp_path / 'run')
  with workdir_lock.WorkdirLock(workdir):
    with pytest.raises(workdir_lock.WorkdirBusy) as error:
      workdir_lock.WorkdirLock(workdir).acquire()
    message = str(error.value)
    assert f'host {socket.gethostname()}, pid {os.getpid()}, since ' in message
    assert '\n' not in message
  assert os.listdir(workdir) == []  # released on the way out


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_warning(tmp_path):
  workdir = str(tmp_path / 'run')
  finished = subprocess.run(
    [sys.executable, '-c', 'import os; print(os.getpid())'],
    capture_output=True,
    text=True,
    check=True,
  )
  _write_lock(workdir, pid=int(finished.stdout))
  said = []
  with workdir_lock.WorkdirLock(workdir, say=said.append) as lock:
    assert workdir_lock.read(workdir)['token'] == lock.token
  assert len(said) == 1 and said[0].startswith(
    'warning: taking over the lock of a run that is gone'
  )


def test_another_hosts_lock_is_abandoned_only_without_a_recent_heartbeat(tmp_path):
  workdir = str(tmp_path / 'run')
  _write_lock(workdir, host='elsewhere', pid=1, heartbeat=time.time() - 5)
  with pytest.raises(workdir_lock.WorkdirBusy, match='host elsewhere, pid 1'):
    workdir_lock.WorkdirLock(workdir).acquire()
  _write_lock(
    workdir, host='elsewhere', pid=1, heartbeat=time.time() - workdir_lock.STALE_SECONDS - 1
  )
  with workdir_lock.WorkdirLock(workdir, say=lambda _: None) as lock:
    assert workdir_lock.read(workdir)['token'] == lock.token


def test_a_run_whose_lock_was_taken_over_does_not_remove_the_new_holders(tmp_path):
  workdir = str(tmp_path / 'run')
  first = workdir_lock.WorkdirLock(workdir)
  first.acquire()
  _write_lock(workdir, token='new holder')
  first.release()
  assert workdir_lock.read(workdir)['token'] == 'new holder'


def test_the_heartbeat_is_renewed_while_the_run_lives(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, 'HEARTBEAT_SECONDS', 0.05)
  workdir = str(tmp_path / 'run')
  with workdir_lock.WorkdirLock(workdir):
    first = workdir_lock.read(workdir)['heartbeat']
    time.sleep(0.3)
    assert workdir_lock.read(workdir)['heartbeat'] > first
