"""Trains the Transformer.

    python train.py --workdir=DIR [--config=configs/default.py] [--config.key=value ...]

The workdir is created if needed; if it holds checkpoints the run resumes from the newest one.
"""

import os

# TensorFlow (used by TFDS only) prints CUDA/oneDNN notices at import; they say nothing about this run.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, tokenizer, metrics and results.')
flags.mark_flag_as_required('workdir')
config_flags.DEFINE_config_file('config', 'configs/default.py', 'Training configuration file.',
                                lock_config=True)
flags.DEFINE_string('coordinator_address', None, 'Multi-host: address:port of process 0 '
                    '(jax.distributed.initialize); omit for one host or on TPU/SLURM auto-detection.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process.')


def main(argv):
  del argv
  import jax
  if FLAGS.coordinator_address or FLAGS.num_processes:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from transformer import trainer
  logging.set_verbosity(logging.WARNING)
  try:
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except trainer.ConfigError as e:
    raise app.UsageError(str(e)) from None


if __name__ == '__main__':
  app.run(main)
