"""Trains the Transformer.

    python train.py --workdir=DIR [--config=configs/default.py] [--config.key=value ...]

The workdir is created if needed; if it holds checkpoints the run resumes from the newest one;
if it holds a finished run, that is said and nothing changes. One run at a time per workdir.
Exit status: 0 when the run finished, 75 when SIGTERM stopped it after saving a checkpoint and 130
when Ctrl-C did (run the same command again to resume; a second Ctrl-C aborts without saving),
2 for a usage, config, data or system error such as a full disk (one line on stderr, `--verbose`
adds the traceback), 1 for anything else (a bug: the traceback is printed).
"""

import os
import runpy
import sys

# TensorFlow (used by TFDS only) prints CUDA/oneDNN notices at import; they say nothing about this run.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, tokenizer, metrics and results.')
config_flags.DEFINE_config_file(
  'config', 'configs/default.py', 'Training configuration file.', lock_config=True
)
flags.DEFINE_string(
  'coordinator_address',
  None,
  'Multi-host: address:port of process 0 '
  '(jax.distributed.initialize); omit for one host or where the cluster is '
  'detected (TPU pods, SLURM, Open MPI, Kubernetes, JAX_COORDINATOR_ADDRESS).',
)
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process.')
flags.DEFINE_bool('verbose', False, 'Print the traceback of usage, config and data errors too.')


def _fail(message: str) -> None:
  print(f'train.py: error: {" ".join(message.split(chr(10)))}', file=sys.stderr)
  sys.exit(2)


def _unknown_override(argv: list[str]) -> str | None:
  """A sentence about the first --config.KEY=... that names no field of the config file."""
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), 'configs/default.py')
  try:
    config = runpy.run_path(path)['get_config']()
  except Exception as e:  # noqa: BLE001  the config file itself is broken
    return f'--config={path}: cannot be loaded ({type(e).__name__}: {e})'
  from transformer.training.config import nearest_keys

  for argument in argv:
    if not argument.startswith('--config.'):
      continue
    key = argument[len('--config.') :].split('=', 1)[0]
    node = config
    for part in key.split('.'):
      if not hasattr(node, 'keys') or part not in node.keys():
        near = nearest_keys(config, key)
        return f'--config.{key}: no such config field' + (
          f' (nearest: {", ".join(near)})' if near else ''
        )
      node = node[part]
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, plus `--config.KEY=None` for the numeric fields where None has a meaning
  (absl's parser of an int or float field does not read 'None'; a string field, such as
  `parallelism='none'`, keeps its own value)."""
  from transformer.training.config import RANGES

  prefix, suffix = '--config.', '=None'
  overrides = [a for a in argv[1:] if a.startswith(prefix) and a.endswith(suffix)]
  keys = {a: a[len(prefix) : -len(suffix)] for a in overrides}
  nones = {a: key for a, key in keys.items() if key in RANGES}
  try:
    rest = FLAGS([a for a in argv if a not in nones])
  except Exception as e:  # noqa: BLE001  flag and config-override errors are the user's to fix
    _fail(_unknown_override(argv[1:]) or str(e).splitlines()[0])
  for key in nones.values():
    if not RANGES[key].none:
      _fail(f'--config.{key} cannot be None: it must be {RANGES[key].describe()}')
    node = FLAGS.config
    *parents, name = key.split('.')
    for part in parents:
      node = node[part]
    node[name] = None
  return rest


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    _fail(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    _fail('--workdir is required')
  from transformer.parallel import distributed

  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from transformer.training import loop as train_loop

  logging.set_verbosity(logging.WARNING)
  try:
    results = train_loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train_loop.USER_ERRORS as e:
    if FLAGS.verbose:
      raise
    _fail(str(e))
  except OSError as e:  # the system's: a full disk, a file that went away, a read-only mount
    if FLAGS.verbose:
      raise
    _fail(_os_error(e))
  except KeyboardInterrupt:
    print(
      'train.py: aborted (a second Ctrl-C): nothing saved since the last checkpoint',
      file=sys.stderr,
    )
    return 130
  if 'preempted_at_step' in results:
    return train_loop.EXIT_STATUS[results['signal']]
  return 0


def _quiet_after_failed_writes(unraisable) -> None:
  """After a failed checkpoint write, the callbacks of Orbax's other writes find their event
  loops closed and report it; that says nothing the one-line error does not. Anything else is
  reported as usual."""
  value = unraisable.exc_value
  if not (isinstance(value, RuntimeError) and 'Event loop is closed' in str(value)):
    sys.__unraisablehook__(unraisable)


def _os_error(error: OSError) -> str:
  """One line: the path (else the workdir) and the system's reason, e.g. '/w/checkpoints: No space
  left on device'."""
  reason = error.strerror or str(error)
  return f'{error.filename or FLAGS.workdir}: {reason}'


if __name__ == '__main__':
  sys.unraisablehook = _quiet_after_failed_writes
  app.run(main, flags_parser=_parse_flags)
