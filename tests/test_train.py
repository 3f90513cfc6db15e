"""End to end: train.py, resume after SIGTERM, checkpoints across device counts, multi-host."""

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from flax import nnx
import jax
import numpy as np
import pytest

from tests.helpers import configs, tiny_run
from transformer.training import (
  checkpoints,
  loop as train_loop,
  steps as training,
  workdir as workdir_lib,
)

ROOT = tiny_run.ROOT
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  return tiny_run.write_tiny_corpus(str(tmp_path_factory.mktemp('corpus')))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, corpus):
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  return workdir, tiny_run.run_train(workdir, tiny_run.tiny_overrides(corpus))


def test_train_py_end_to_end_writes_everything(trained, corpus):
  workdir, result = trained
  out = result.stdout
  assert 'step      6/6 | loss' in out and 'tok/s' in out and 'MFU' in out and 'ETA' in out
  assert 'eval step 6:' in out and 'BLEU' in out and 'hypothesis:' in out
  assert 'vocab 500 (set)' in out and '(auto: ' in out and 'passes over' in out  # the plan, printed
  for name in ('config.json', 'tokenizer.model', 'metrics.jsonl', 'results.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert os.listdir(os.path.join(workdir, 'best'))
  assert any(f.startswith('events') for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  records = tiny_run.metrics(workdir)
  assert [r['step'] for r in records if 'train_loss' in r] == [2, 4, 6]
  assert [r['step'] for r in records if 'eval_bleu' in r] == [3, 6]
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert {'test_bleu_greedy', 'test_bleu_beam2', 'eval_loss', 'step'} <= set(results)
  # The beam size and length penalty chosen on validation: every α of the grid tried with beam 2.
  decoding = results['decoding']
  assert [(r['beam_size'], r['length_penalty']) for r in decoding['tried']] == [
    (1, 0.6),
    (2, 0.6),
    (2, 0.2),
    (2, 1.0),
    (2, 1.4),
  ]
  best = max(decoding['tried'], key=lambda r: r['bleu'])
  assert decoding['validation_bleu'] == best['bleu'] and 'chosen: beam' in out

  # A second run says the run finished and changes nothing; one asking for more steps resumes and
  # reuses the tokenizer (in a copy: the module's other tests use this workdir); a changed model
  # is refused.
  again = tiny_run.run_train(workdir, tiny_run.tiny_overrides(corpus))
  assert 'this run finished at step 6' in again.stdout
  assert json.load(open(os.path.join(workdir, 'results.json'))) == results
  longer = os.path.join(os.path.dirname(workdir), 'longer')
  shutil.copytree(workdir, longer)
  more = tiny_run.run_train(longer, tiny_run.tiny_overrides(corpus, num_train_steps=8))
  assert 'resumed from checkpoint at step 6' in more.stdout and 'tokenizer: reused' in more.stdout
  changed = tiny_run.run_train(
    workdir, tiny_run.tiny_overrides(corpus, **{'model.d_model': 64}), check=False
  )
  assert (
    changed.returncode != 0 and 'different config' in changed.stderr and 'model' in changed.stderr
  )


def test_invalid_config_is_refused_before_anything_runs(tmp_path, corpus):
  workdir = str(tmp_path / 'bad')
  result = tiny_run.run_train(
    workdir, tiny_run.tiny_overrides(corpus, **{'model.num_heads': 5}), check=False
  )
  assert result.returncode != 0 and 'divisible by num_heads' in result.stderr
  result = tiny_run.run_train(workdir, tiny_run.tiny_overrides(corpus, batch_size=0), check=False)
  assert result.returncode != 0 and 'config.batch_size must be an integer >= 1' in result.stderr


def _started_until_step(workdir: str, overrides: list[str], step: int) -> subprocess.Popen:
  """A train.py process, returned once its metrics.jsonl has logged `step`."""
  process = subprocess.Popen(
    tiny_run.train_command(workdir, overrides),
    cwd=ROOT,
    env=tiny_run.env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics_file = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline:
    if os.path.exists(metrics_file) and any(
      json.loads(line)['step'] >= step for line in open(metrics_file) if line.endswith('\n')
    ):
      return process
    assert process.poll() is None, process.communicate()
    time.sleep(0.02)
  raise AssertionError(f'train.py did not reach step {step} in 300 s')


def test_exact_resume_after_sigterm(tmp_path, corpus):
  overrides = tiny_run.tiny_overrides(
    corpus,
    num_train_steps=60,
    log_every=1,
    eval_every=1000,
    checkpoint_every=1000,
    **{'model.dropout_rate': 0.1},
  )
  straight = str(tmp_path / 'straight')
  tiny_run.run_train(straight, overrides)

  interrupted = str(tmp_path / 'interrupted')
  process = _started_until_step(interrupted, overrides, 20)  # SIGTERM once 20 steps are done
  # Stopped, the run cannot finish before the signal is delivered, however fast its steps are:
  # SIGTERM waits, pending, until SIGCONT, and is then handled at the next step.
  process.send_signal(signal.SIGSTOP)
  assert process.poll() is None, 'the run finished before it could be interrupted'
  process.send_signal(signal.SIGTERM)
  process.send_signal(signal.SIGCONT)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == train_loop.PREEMPTED_EXIT_STATUS == 75, stderr[-3000:]
  assert 'SIGTERM received: saving a checkpoint at step' in stdout, stdout[-2000:]
  saved_step = int(stdout.split('saving a checkpoint at step ')[1].split()[0])
  assert 20 <= saved_step < 60

  resumed = tiny_run.run_train(interrupted, overrides)
  assert f'resumed from checkpoint at step {saved_step}' in resumed.stdout
  step_a, params_a = tiny_run.final_params(straight)
  step_b, params_b = tiny_run.final_params(interrupted)
  assert step_a == step_b == 60
  for name in params_a:
    np.testing.assert_allclose(params_b[name], params_a[name], atol=1e-6, err_msg=name)
  # Same data order: the per-step training losses after the resume point match too.
  loss = lambda w: {r['step']: r['train_loss'] for r in tiny_run.metrics(w) if 'train_loss' in r}
  straight_loss, resumed_loss = loss(straight), loss(interrupted)
  for step in range(saved_step + 1, 61):
    assert resumed_loss[step] == pytest.approx(straight_loss[step], abs=1e-5), step


def test_checkpoints_restore_across_device_counts_and_meshes(tmp_path, corpus):
  def overrides(steps, parallelism='shard_map', mesh='(-1,1,1)'):
    # No dropout: each replica draws its own masks, so different device counts would differ.
    # rsqrt: its learning rate does not depend on num_train_steps, which the resume raises 4 -> 8.
    return tiny_run.tiny_overrides(
      corpus,
      num_train_steps=steps,
      eval_every=1000,
      checkpoint_every=4,
      log_every=1,
      test_beam_sizes='(1,)',
      parallelism=parallelism,
      mesh=mesh,
      lr_schedule='rsqrt',
      **{'model.dropout_rate': 0.0},
    )

  # Compiled as users compile: the fast compile's rounding moves 1- and 8-device sums apart more
  # than the 2e-4 this test holds them to.
  run_train = functools.partial(tiny_run.run_train, fast_compile=False)
  reference = str(tmp_path / 'eight')
  run_train(reference, overrides(8), devices=8)
  _, expected = tiny_run.final_params(reference)
  # A single-device run ('none') resumed on 8 replicas (shard_map); an 8-replica run resumed on
  # a (2, 2, 2) mesh (gspmd: FSDP and tensor parallelism), which also validates and tests
  # with the sharded parameters.
  cases = {
    '1_to_8': (1, overrides(4, 'none'), 8, overrides(8)),
    '8_to_2x2x2': (8, overrides(4), 8, overrides(8, 'gspmd', '(2,2,2)')),
  }
  for name, (first, first_flags, second, second_flags) in cases.items():
    workdir = str(tmp_path / name)
    run_train(workdir, first_flags, devices=first)
    result = run_train(workdir, second_flags, devices=second)
    assert 'resumed from checkpoint at step 4' in result.stdout
    assert f'on {second} device(s)' in result.stdout
    step, params = tiny_run.final_params(workdir)
    assert step == 8
    for key in expected:
      # Sums over 1 or 8 devices round differently; Adam turns that noise into up to lr-sized
      # steps where a gradient is near zero (a rare embedding row), so a few entries may differ
      # by ~1e-3 while the rest agree to 2e-4.
      difference = np.abs(params[key] - expected[key])
      assert difference.max() < 2e-3, f'{name} {key}'
      assert (difference > 2e-4).mean() < 1e-3, f'{name} {key}'
  assert '(gspmd)' in result.stdout and 'test BLEU' in result.stdout


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _multihost_step(out: str, processes: int, devices: int, *options: str) -> np.lib.npyio.NpzFile:
  """tests/helpers/multihost_step.py run as `processes` processes of `devices` devices each."""
  script = os.path.join(ROOT, 'tests', 'helpers', 'multihost_step.py')
  port = str(_free_port()) if processes > 1 else '0'
  workers = [
    subprocess.Popen(
      [sys.executable, script, str(i), str(processes), port, out, *options],
      cwd=ROOT,
      env=tiny_run.env(devices),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for i in range(processes)
  ]
  for worker in workers:
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err.decode()[-3000:]
  return np.load(out)


def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
  a = _multihost_step(str(tmp_path / 'single.npz'), 1, 4)
  b = _multihost_step(str(tmp_path / 'multi.npz'), 2, 2)
  assert int(a['devices']) == int(b['devices']) == 4
  np.testing.assert_allclose(b['loss'], a['loss'], atol=1e-6)
  for key in a.files:
    np.testing.assert_allclose(b[key], a[key], atol=1e-5, err_msg=key)


def test_two_processes_save_their_shards_of_a_sharded_state_and_restore_them(tmp_path):
  """gspmd on a (1, 2, 2) mesh over 2 processes: each writes its own shards; the checkpoint
  restores into the same layout and, whole, onto one device."""
  a = _multihost_step(str(tmp_path / 'single.npz'), 1, 4, 'gspmd')
  directory = str(tmp_path / 'checkpoint')
  b = _multihost_step(str(tmp_path / 'multi.npz'), 2, 2, 'gspmd', directory)
  np.testing.assert_allclose(b['loss'], a['loss'], atol=1e-6)
  model = training.create_model(configs.tiny_config(), seed=0)
  params = nnx.split(model, nnx.Param, ...)[1]
  reader = checkpoints.Checkpointer(directory, keep_best=False, read_only=True)
  on_one = jax.tree.leaves(reader.restore_params(params).state)
  for index, leaf in enumerate(on_one):
    np.testing.assert_allclose(b[str(index)], a[str(index)], atol=1e-5, err_msg=str(index))
    np.testing.assert_array_equal(leaf, b[str(index)])


def test_default_config_loss_decreases_on_the_embedded_corpus(tmp_path):
  """The real default model and data (small batch, few steps): the loss must go down."""
  workdir = str(tmp_path / 'default')
  overrides = [
    f'--config.{k}={v}'
    for k, v in {
      'num_train_steps': 40,
      'batch_size': 8,
      'log_every': 5,
      'eval_every': 1000,
      'checkpoint_every': 1000,
      'bleu_sentences': 4,
      'test_beam_sizes': '(1,)',
      'test_max_sentences': 4,
      'tfds_data_dir': str(tmp_path / 'tfds'),
      'vocab_max_sentences': 20000,
    }.items()
  ]
  tiny_run.run_train(workdir, overrides)
  losses = [r['train_loss'] for r in tiny_run.metrics(workdir) if 'train_loss' in r]
  assert len(losses) == 8
  assert losses[-1] < losses[0] - 1.0, losses


def _translate(args, stdin='', command='transformer.translate'):
  return subprocess.run(
    [sys.executable, '-m', command, *args],
    cwd=ROOT,
    env=tiny_run.env(),
    input=stdin,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_translate_round_trip(trained, tmp_path):
  workdir, _ = trained
  lines = [
    'In the beginning God created the heavens and the earth.',
    '',
    'And God said',
    '',
    'word ' * 200,
  ]
  result = _translate([f'--workdir={workdir}', '--beam_size=2'], '\n'.join(lines) + '\n')
  assert result.returncode == 0, result.stderr[-3000:]
  outputs = result.stdout.split('\n')[:-1]
  assert len(outputs) == len(lines)
  assert outputs[1] == '' and outputs[3] == ''
  assert 'line 5:' in result.stderr and 'truncated' in result.stderr
  # The command prints what the library translates with the same checkpoint.
  from transformer.decoding import translation

  model, tokenizer, _ = workdir_lib.load_model(workdir)
  assert outputs == translation.translate(model, tokenizer, lines, beam_size=2, warn=lambda _: None)
  # Two best of each, with scores: two parseable lines per input line, the first the best.
  listed = _translate(
    [f'--workdir={workdir}', '--beam_size=2', '--n_best=2'], '\n'.join(lines[:3]) + '\n'
  )
  assert listed.returncode == 0, listed.stderr[-3000:]
  rows = [line.split(' ||| ') for line in listed.stdout.splitlines()]
  assert [int(r[0]) for r in rows] == [0, 0, 1, 1, 2, 2] and all(len(r) == 4 for r in rows)
  assert rows[0][1] == outputs[0] and float(rows[0][2]) >= float(rows[1][2])
  too_many = _translate([f'--workdir={workdir}', '--beam_size=2', '--n_best=3'], 'hello\n')
  assert too_many.returncode == 2, too_many.stderr
  assert '--n_best must be between 1 and the beam size 2, got 3' in too_many.stderr
  # Two seeded samples of each line: the same on a second run, listed like an n-best list.
  sampled = [
    _translate(
      [f'--workdir={workdir}', '--sampling_temperature=1.5', '--num_samples=2', '--seed=3'],
      '\n'.join(lines[:3]) + '\n',
    )
    for _ in range(2)
  ]
  assert sampled[0].returncode == 0, sampled[0].stderr[-3000:]
  assert sampled[0].stdout == sampled[1].stdout
  assert [line.split(' ||| ')[0] for line in sampled[0].stdout.splitlines()] == list('001122')
  beams = _translate([f'--workdir={workdir}', '--sampling_topk=5', '--beam_size=4'], 'hello\n')
  assert beams.returncode == 2 and '--beam_size must be 1 with sampling' in beams.stderr
  # From a file, greedy, the best checkpoint: same line count.
  source = tmp_path / 'in.txt'
  source.write_text('\n'.join(lines[:3]) + '\n', encoding='utf-8')
  result = _translate(
    [f'--workdir={workdir}', f'--input={source}', '--beam_size=1', '--checkpoint=best']
  )
  assert result.returncode == 0 and len(result.stdout.split('\n')[:-1]) == 3


def test_translate_ensembles_prefixes_and_alignments(trained, tmp_path):
  workdir, _ = trained
  lines = ['In the beginning God created the heavens and the earth.', '', 'And God said']
  text = '\n'.join(lines) + '\n'
  single = _translate([f'--workdir={workdir}', '--beam_size=2'], text)
  # The run's chosen decoding is the default, and says so.
  chosen = json.load(open(os.path.join(workdir, 'results.json')))['decoding']
  default = _translate([f'--workdir={workdir}'], text)
  assert default.returncode == 0, default.stderr[-3000:]
  assert f'beam {chosen["beam_size"]}, length penalty {chosen["length_penalty"]}' in default.stderr
  # An ensemble of the run with itself translates as the run; of two checkpoints, it runs.
  twice = _translate([f'--workdir={workdir}', f'--workdir={workdir}', '--beam_size=2'], text)
  assert twice.returncode == 0, twice.stderr[-3000:]
  assert 'an ensemble of 2' in twice.stderr and twice.stdout == single.stdout
  checkpoints = [f'--workdir={workdir}', '--checkpoint=latest', '--checkpoint=best']
  assert _translate(checkpoints, text).returncode == 0
  # Prefixes: each translation starts with its line's prefix; the counts must agree.
  prefixes = tmp_path / 'prefixes.txt'
  prefixes.write_text('Au commencement\n\nEt\n', encoding='utf-8')
  forced = _translate([f'--workdir={workdir}', f'--prefix_file={prefixes}', '--beam_size=2'], text)
  assert forced.returncode == 0, forced.stderr[-3000:]
  outputs = forced.stdout.split('\n')[:-1]
  assert outputs[0].startswith('Au commencement') and outputs[2].startswith('Et')
  assert outputs[1] == ''
  prefixes.write_text('Au commencement\n', encoding='utf-8')
  short = _translate([f'--workdir={workdir}', f'--prefix_file={prefixes}'], text)
  assert short.returncode == 2 and '1 prefixes for 3 input lines' in short.stderr
  assert 'Traceback' not in short.stderr
  # Alignments after the text, in Pharaoh format, on words.
  aligned = _translate([f'--workdir={workdir}', '--alignment=words', '--beam_size=1'], text)
  assert aligned.returncode == 0, aligned.stderr[-3000:]
  first = aligned.stdout.split('\n')[0].split(' ||| ')
  assert len(first) == 2 and re.fullmatch(r'(\d+-\d+)( \d+-\d+)*', first[1]), first
  words = len(lines[0].split())
  assert all(int(pair.split('-')[0]) < words for pair in first[1].split())


def test_translate_errors_are_clear(tmp_path, trained):
  missing = _translate([f'--workdir={tmp_path / "nowhere"}'], 'hello\n')
  assert missing.returncode == 2 and 'not a training workdir' in missing.stderr
  empty = tmp_path / 'empty'
  empty.mkdir()
  workdir, _ = trained
  for name in ('config.json', 'tokenizer.model'):
    (empty / name).write_bytes(open(os.path.join(workdir, name), 'rb').read())
  no_model = _translate([f'--workdir={empty}'], 'hello\n')
  assert no_model.returncode == 2 and 'has no model.json' in no_model.stderr, no_model.stderr
  (empty / 'model.json').write_bytes(open(os.path.join(workdir, 'model.json'), 'rb').read())
  no_checkpoint = _translate([f'--workdir={empty}'], 'hello\n')
  assert no_checkpoint.returncode == 2 and 'no latest checkpoint' in no_checkpoint.stderr
  bad_beam = _translate([f'--workdir={workdir}', '--beam_size=0'], 'hello\n')
  assert bad_beam.returncode != 0 and 'beam_size' in bad_beam.stderr
  too_long = _translate([f'--workdir={workdir}', '--max_new_tokens=100000'], 'hello\n')
  assert too_long.returncode == 2 and 'Traceback' not in too_long.stderr
  assert 'is more than the model can generate (160 positions)' in too_long.stderr
  a_workdir = _translate([f'--pretrained={workdir}'], 'hello\n')
  assert a_workdir.returncode == 2 and 'Traceback' not in a_workdir.stderr
  assert 'is a training workdir of this package, not a Hugging Face model' in a_workdir.stderr


def test_translate_into_a_closed_pipe_ends_quietly(trained):
  workdir, _ = trained
  command = f'{sys.executable} -m transformer.translate --workdir={workdir} --beam_size=1 | true'
  lines = ''.join(f'In the beginning {i}.\n' for i in range(2000))
  result = subprocess.run(
    command,
    shell=True,
    cwd=ROOT,
    env=tiny_run.env(),
    input=lines,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert 'Traceback' not in result.stderr and 'BrokenPipeError' not in result.stderr, result.stderr


def test_ctrl_c_saves_a_checkpoint_and_exits_130_and_the_run_resumes(tmp_path, corpus):
  overrides = tiny_run.tiny_overrides(
    corpus, num_train_steps=200, log_every=1, eval_every=1000, checkpoint_every=1000
  )
  workdir = str(tmp_path / 'run')
  process = _started_until_step(workdir, overrides, 1)
  process.send_signal(signal.SIGSTOP)  # as for SIGTERM: the signal waits for the next step
  process.send_signal(signal.SIGINT)
  process.send_signal(signal.SIGCONT)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 130, stderr[-3000:]
  assert 'Traceback' not in stderr and 'SIGINT received: saving a checkpoint at step' in stdout
  saved_step = int(stdout.split('saving a checkpoint at step ')[1].split()[0])
  resumed = tiny_run.run_train(workdir, overrides)
  assert f'resumed from checkpoint at step {saved_step}' in resumed.stdout


def test_the_fault_injection_benchmark_survives_kills_and_refuses_a_second_run(tmp_path):
  command = [
    sys.executable,
    '-m',
    'benchmarks.faults',
    '--kills=2',
    '--steps=12',
    '--checkpoint_every=3',
    f'--workdir={tmp_path}',
    '--json',
  ]
  result = subprocess.run(
    command, cwd=ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=900
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['kills'] == 2 and report['identical'], report['differences']
  # Checkpoints are written asynchronously; the next save waits for the one in flight, so a kill
  # loses fewer than 2 × checkpoint_every steps (at most checkpoint_every once a save is written).
  assert report['max_steps_lost'] < 2 * 3, report['steps_lost']
  assert report['concurrent_run']['refused_in_one_line'], report['concurrent_run']
  assert report['concurrent_run']['first_finished']
  if 'skipped' not in report['full_disk']:
    assert report['full_disk']['one_line'], report['full_disk']
    assert report['full_disk']['rerun_with_room_finished'], report['full_disk']


def test_the_average_command_writes_a_checkpoint_translate_loads(tmp_path, trained):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  command = [
    sys.executable,
    '-m',
    'transformer.average',
    f'--workdir={workdir}',
    '--last=2',
  ]
  result = subprocess.run(
    command, cwd=ROOT, env=tiny_run.env(), capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0 and 'steps [3, 6]' in result.stdout, result.stderr[-3000:]
  averaged, _, step = workdir_lib.load_model(workdir, which='average')
  latest, _, _ = workdir_lib.load_model(workdir)
  assert step == 6
  a, b = averaged.embed.table.embedding[...], latest.embed.table.embedding[...]
  assert float(abs(a - b).max()) > 0  # the mean of steps 3 and 6, not step 6
  translated = _translate([f'--workdir={workdir}', '--checkpoint=average'], 'And God said\n')
  assert translated.returncode == 0 and len(translated.stdout.split('\n')[:-1]) == 1
  nowhere = subprocess.run(
    [*command[:3], f'--workdir={tmp_path / "nowhere"}'],
    cwd=ROOT,
    env=tiny_run.env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert nowhere.returncode == 2 and nowhere.stderr.startswith('average: error:'), nowhere.stderr


def _two_processes(workdir, overrides):
  """train.py as 2 processes of 1 CPU device each (gloo collectives on 127.0.0.1)."""
  port = _free_port()
  environment = {**tiny_run.env(1), 'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo'}
  return [
    subprocess.Popen(
      tiny_run.train_command(workdir, overrides)
      + [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT,
      env=environment,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def test_two_processes_with_an_uneven_validation_split_complete(tmp_path):
  corpus = tiny_run.write_tiny_corpus(str(tmp_path / 'corpus'), train=200, eval_=9)
  overrides = tiny_run.tiny_overrides(
    corpus,
    batch_size=4,
    eval_batch_size=4,
    decode_batch_size=4,
    test_beam_sizes='(1,)',
    bleu_sentences=5,
  )
  workers = _two_processes(str(tmp_path / 'run'), overrides)
  outputs = [worker.communicate(timeout=600) for worker in workers]
  for worker, (_, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
  assert '2 process(es)' in outputs[0][0] and 'eval step 6:' in outputs[0][0]
  assert 'test BLEU' in outputs[0][0] and 'step ' not in outputs[1][0]  # only process 0 reports


def test_sigterm_to_one_process_makes_both_save_the_same_step_and_exit(tmp_path):
  corpus = tiny_run.write_tiny_corpus(str(tmp_path / 'corpus'), train=200, eval_=9)
  overrides = tiny_run.tiny_overrides(
    corpus,
    batch_size=4,
    eval_batch_size=4,
    num_train_steps=100000,
    log_every=1,
    eval_every=100000,
    checkpoint_every=100000,
  )
  workdir = str(tmp_path / 'run')
  workers = _two_processes(workdir, overrides)
  metrics_file = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 300
  while not (os.path.exists(metrics_file) and len(open(metrics_file).readlines()) >= 10):
    assert time.time() < deadline and all(w.poll() is None for w in workers)
    time.sleep(0.1)
  workers[1].send_signal(signal.SIGTERM)  # the process that does not log
  outputs = [worker.communicate(timeout=300) for worker in workers]
  assert [w.returncode for w in workers] == [train_loop.PREEMPTED_EXIT_STATUS] * 2, outputs[1][1][
    -3000:
  ]
  saved = int(outputs[0][0].split('saving a checkpoint at step ')[1].split()[0])
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))) == [saved]
  data = sorted(
    n
    for n in os.listdir(os.path.join(workdir, 'checkpoints', str(saved), 'data'))
    if n.endswith('.json')
  )
  assert data == ['process_0-of-2.json', 'process_1-of-2.json']


def _export(args):
  return _translate(args, command='transformer.export')


def test_a_trained_workdir_exports_to_ctranslate2_which_translates_as_translate_does(
  trained, corpus, tmp_path
):
  """train.py's model (pre-LN) -> `transformer.export` -> CTranslate2, greedy over the test
  split: the lines `python -m transformer.translate` prints."""
  import ctranslate2

  from benchmarks import ctranslate2_side

  workdir, _ = trained
  out = tmp_path / 'ct2'
  result = _export([f'--workdir={workdir}', '--format=ctranslate2', f'--out={out}'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert {'model.bin', 'sentencepiece.model', 'transformer_export.json'} <= set(os.listdir(out))
  lines = [line.split('\t')[0] for line in open(corpus['test'], encoding='utf-8')][1:]
  printed = _translate([f'--workdir={workdir}', '--beam_size=1'], '\n'.join(lines) + '\n')
  assert printed.returncode == 0, printed.stderr[-3000:]
  model, tokenizer, _ = workdir_lib.load_model(workdir)
  theirs = ctranslate2_side.translate(
    ctranslate2.Translator(str(out)), tokenizer, model.config, lines, 1, 0.6
  )
  assert printed.stdout.split('\n')[:-1] == theirs
  again = _export([f'--workdir={workdir}', f'--out={out}'])
  assert again.returncode == 2 and f'--out={out} exists; give --force' in again.stderr
  marian = _export([f'--workdir={workdir}', '--format=marian', f'--out={tmp_path / "hf"}'])
  assert marian.returncode == 2 and 'Traceback' not in marian.stderr
  assert "Marian cannot express this model: norm_position='pre'" in marian.stderr
  assert not os.path.exists(tmp_path / 'hf')
  inside = _export([f'--workdir={workdir}', f'--out={os.path.join(workdir, "x")}'])
  assert inside.returncode == 2 and 'would write into the model it exports' in inside.stderr


def test_a_run_with_scanned_layers_trains_tests_translates_and_averages(tmp_path, corpus):
  import jax.numpy as jnp

  workdir = str(tmp_path / 'scanned')
  overrides = tiny_run.tiny_overrides(
    corpus,
    num_train_steps=6,
    checkpoint_every=3,
    **{'model.scan_layers': True, 'model.num_encoder_layers': 2, 'model.num_decoder_layers': 2},
  )
  result = tiny_run.run_train(workdir, overrides)
  assert 'test BLEU (greedy' in result.stdout  # decoding ran on the unrolled model
  stacked, _, _ = workdir_lib.load_model(workdir, unroll=False)
  unrolled, _, step = workdir_lib.load_model(workdir)
  assert step == 6 and stacked.config.scan_layers and not unrolled.config.scan_layers
  assert (
    stacked.encoder.layers.self_attention.w_qkv.shape[0] == 2 and len(unrolled.encoder.layers) == 2
  )
  src, tgt = jnp.array([[5, 6, 7, 2]]), jnp.array([[1, 9, 10, 11]])
  np.testing.assert_allclose(stacked(src, tgt), unrolled(src, tgt), atol=1e-5)
  command = [sys.executable, '-m', 'transformer.translate', f'--workdir={workdir}']
  translated = subprocess.run(
    command, input='He wept.\n', capture_output=True, text=True, cwd=ROOT, env=tiny_run.env(),
    timeout=300,
  )  # fmt: skip
  assert translated.returncode == 0 and translated.stdout.strip(), translated.stderr[-2000:]
  averaged = subprocess.run(
    [sys.executable, '-m', 'transformer.average', f'--workdir={workdir}', '--last=2'],
    capture_output=True, text=True, cwd=ROOT, env=tiny_run.env(), timeout=300,
  )  # fmt: skip
  assert averaged.returncode == 0, averaged.stderr[-2000:]
