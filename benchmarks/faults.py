"""Fault injection: a tiny run killed at random moments, rerun each time with the same command,
must end exactly where an uninterrupted run of the same config ends.

    python -m benchmarks.faults [--kills=50] [--steps=40] [--checkpoint_every=5] [--seed=0]
                                [--workdir=DIR] [--json]

It trains the reference run once, then starts the same command again and again, sending SIGKILL
after a random delay (anywhere from the start-up to the end of a run), until `--kills` kills are
done; then it lets the run finish. It prints the kills survived, the steps lost per kill (the
steps logged before the kill that the next run trained again: fewer than 2 × `checkpoint_every`,
since a checkpoint is written asynchronously while the next steps run), and
whether the final parameters, per-step training losses and results.json equal the reference's.
Then two faults other than kills: a second run started on the workdir while the first one runs
(it must be refused in one line) and a full filesystem (a small tmpfs, where the machine allows
mounting one: the run must fail in one line and a rerun with room must finish).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

import numpy as np

from tests.helpers import tiny_run


def _overrides(corpus: dict[str, str], args) -> list[str]:
  return tiny_run.tiny_overrides(
    corpus,
    num_train_steps=args.steps,
    log_every=1,
    eval_every=args.checkpoint_every * 2,
    checkpoint_every=args.checkpoint_every,
    keep_checkpoints=3,
  )


def _outcome(workdir: str) -> dict[str, Any]:
  """The final parameters, the last training loss logged for each step, and results.json."""
  step, params = tiny_run.final_params(workdir)
  losses = {r['step']: r['train_loss'] for r in tiny_run.metrics(workdir) if 'train_loss' in r}
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  return {'step': step, 'params': params, 'losses': losses, 'results': results}


def _same(reference: dict[str, Any], outcome: dict[str, Any]) -> list[str]:
  """What differs between two outcomes (empty: identical within float tolerance)."""
  differences = []
  if reference['step'] != outcome['step']:
    differences.append(f'final step {outcome["step"]} != {reference["step"]}')
  for name, value in reference['params'].items():
    if not np.allclose(outcome['params'][name], value, atol=1e-6):
      differences.append(f'params {name}')
  for step, loss in reference['losses'].items():
    if abs(outcome['losses'].get(step, float('nan')) - loss) > 1e-5:
      differences.append(f'train loss at step {step}')
  for key, value in reference['results'].items():
    if key in ('loop_minutes',):
      continue
    other = outcome['results'].get(key)
    if isinstance(value, float) and isinstance(other, float):
      if abs(other - value) > 1e-4:
        differences.append(f'results {key}: {other} != {value}')
    elif other != value:
      differences.append(f'results {key}: {other!r} != {value!r}')
  return differences


def _last_step_printed(output: str) -> int | None:
  """The last training step a run's output logged, or None."""
  steps = re.findall(r'^step +(\d+)/', output, flags=re.MULTILINE)
  return int(steps[-1]) if steps else None


def _resumed_step(output: str) -> int | None:
  found = re.search(r'^resumed from checkpoint at step (\d+)', output, flags=re.MULTILINE)
  return int(found[1]) if found else None


def _start(workdir: str, overrides: list[str]) -> subprocess.Popen:
  command = tiny_run.train_command(workdir, overrides)
  return subprocess.Popen(
    command,
    cwd=tiny_run.ROOT,
    env=tiny_run.env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _campaign(
  workdir: str,
  overrides: list[str],
  rng: random.Random,
  kills_left: int,
  window: tuple[float, float],
) -> tuple[int, list[int]]:
  """Kills runs of one workdir at a random moment of `window` (seconds after the start: from the
  first step to the end of a run), at most `kills_left` times, and reruns them until one
  finishes; returns (kills, steps lost per kill)."""
  kills, lost, pending = 0, [], None  # pending: the last step a killed run logged
  while True:
    process = _start(workdir, overrides)
    killed = kills < kills_left
    try:
      process.wait(timeout=rng.uniform(*window) if killed else 900)
      killed = False
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGKILL)
    output = process.communicate()[0]
    logged, resumed = _last_step_printed(output), _resumed_step(output)
    if pending is not None and (resumed is not None or logged is not None):
      lost.append(max(pending - (resumed or 0), 0))  # what the kill cost this run
      pending = None
    if killed:
      kills += 1
      pending = logged if logged is not None else pending
    elif process.returncode != 0:
      raise RuntimeError(f'a run failed ({process.returncode}):\n{output[-3000:]}')
    else:
      return kills, lost


def _kill_and_rerun(
  folder: str, overrides: list[str], args, window: tuple[float, float], reference: dict[str, Any]
) -> dict:
  """Campaigns of killed-and-rerun runs, each in a new workdir, until `args.kills` kills; each
  campaign's final state is compared with the uninterrupted run's."""
  rng = random.Random(args.seed)
  kills, lost, differences, campaign = 0, [], [], 0
  while kills < args.kills:
    campaign += 1
    workdir = os.path.join(folder, f'killed-{campaign}')
    done, campaign_lost = _campaign(workdir, overrides, rng, args.kills - kills, window)
    kills, lost = kills + done, lost + campaign_lost
    differences += [f'run {campaign}: {d}' for d in _same(reference, _outcome(workdir))]
  return {'kills': kills, 'campaigns': campaign, 'steps_lost': lost, 'differences': differences}


def _one_line_error(result: subprocess.CompletedProcess) -> bool:
  """Exit status 2, the error as the last line of stderr, and no traceback anywhere."""
  lines = result.stderr.strip().splitlines()
  return (
    result.returncode == 2
    and bool(lines)
    and lines[-1].startswith('train.py: error: ')
    and 'Traceback' not in result.stderr
  )


def _reference(workdir: str, overrides: list[str]) -> tuple[float, float]:
  """Trains the uninterrupted run; returns its seconds to the first logged step and in all."""
  started = time.perf_counter()
  process, first_step = _start(workdir, overrides), None
  for line in process.stdout:
    if first_step is None and re.match(r'step +\d+/', line):
      first_step = time.perf_counter() - started
  if process.wait() != 0:
    raise RuntimeError(f'the reference run failed ({process.returncode})')
  return first_step or 0.0, time.perf_counter() - started


def _concurrent_run(folder: str, overrides: list[str]) -> dict:
  """A second run on a workdir that a live run holds: refused at once, in one line."""
  workdir = os.path.join(folder, 'concurrent')
  first = subprocess.Popen(
    tiny_run.train_command(workdir, overrides),
    cwd=tiny_run.ROOT,
    env=tiny_run.env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  lock = os.path.join(workdir, 'lock.json')
  deadline = time.time() + 120
  while not os.path.exists(lock) and time.time() < deadline and first.poll() is None:
    time.sleep(0.05)
  second = tiny_run.run_train(workdir, overrides, check=False)
  first.wait(timeout=600)
  stderr = second.stderr.strip().splitlines()
  return {
    'second_exit_status': second.returncode,
    'second_message': stderr[-1] if stderr else '',
    'refused_in_one_line': _one_line_error(second) and 'is in use by another run' in stderr[-1],
    'first_finished': first.returncode == 0,
  }


def _full_disk(folder: str, corpus: dict[str, str], args) -> dict:
  """A run on a filesystem too small for it (a tmpfs), then a rerun with room."""
  mount = os.path.join(folder, 'small-disk')
  os.makedirs(mount, exist_ok=True)
  mounted = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', mount], capture_output=True, text=True
  )
  if mounted.returncode != 0:
    return {'skipped': f'no tmpfs could be mounted here ({mounted.stderr.strip()})'}
  try:
    workdir = os.path.join(mount, 'run')
    full = tiny_run.run_train(workdir, _overrides(corpus, args), check=False)
    stderr = full.stderr.strip().splitlines()
    moved = os.path.join(folder, 'run-with-room')
    shutil.copytree(workdir, moved)
  finally:
    subprocess.run(['umount', mount], capture_output=True)
  rerun = tiny_run.run_train(moved, _overrides(corpus, args), check=False)
  return {
    'full_exit_status': full.returncode,
    'full_message': stderr[-1] if stderr else '',
    'one_line': _one_line_error(full),
    'rerun_with_room_finished': rerun.returncode == 0,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--kills', type=int, default=50)
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--checkpoint_every', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default=None, help='where the runs go (default: a temp folder)')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  folder = args.workdir or tempfile.mkdtemp(prefix='faults-')
  corpus = tiny_run.write_tiny_corpus(os.path.join(folder, 'corpus'))
  overrides = _overrides(corpus, args)
  first_step, run_seconds = _reference(os.path.join(folder, 'reference'), overrides)
  reference = _outcome(os.path.join(folder, 'reference'))
  report = _kill_and_rerun(folder, overrides, args, (first_step, run_seconds), reference)
  report['identical'] = not report['differences']
  report['max_steps_lost'] = max(report['steps_lost'], default=0)
  report['concurrent_run'] = _concurrent_run(folder, overrides)
  report['full_disk'] = _full_disk(folder, corpus, args)
  if args.json:
    print(json.dumps(report))
    return
  print(
    f'kills survived: {report["kills"]} over {report["campaigns"]} killed-and-rerun runs, each '
    f'to its end; reference run {run_seconds:.0f} s'
  )
  print(
    f'steps lost per kill: max {report["max_steps_lost"]} (checkpoint_every '
    f'{args.checkpoint_every}), mean {np.mean(report["steps_lost"] or [0]):.1f}'
  )
  print(
    'final state identical to the uninterrupted run: '
    + ('yes' if report['identical'] else f'NO: {report["differences"][:5]}')
  )
  print(f'concurrent second run: {report["concurrent_run"]}')
  print(f'full filesystem: {report["full_disk"]}')


if __name__ == '__main__':
  main()
