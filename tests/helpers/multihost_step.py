"""One train step, run as one of several processes (or alone), printing loss and params.

    python multihost_step.py PROCESS_ID NUM_PROCESSES PORT OUT.npz [PARALLELISM [CHECKPOINT_DIR]]
NUM_PROCESSES=1 runs without jax.distributed (the single-process reference). PARALLELISM is
'shard_map' (default) or 'gspmd' (a (1, 2, 2) mesh: FSDP and tensor parallelism); with
CHECKPOINT_DIR the state after the step is saved there as it lies (each process its shards),
restored into the same layout, and the restored parameters are the ones printed.
"""

import os
import sys

process_id, num_processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
parallelism = sys.argv[5] if len(sys.argv) > 5 else 'shard_map'
checkpoint_dir = sys.argv[6] if len(sys.argv) > 6 else ''
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402

if num_processes > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f'127.0.0.1:{port}', num_processes, process_id)

import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import synthetic_batch  # noqa: E402
from tests.helpers import configs  # noqa: E402
from transformer.parallel import strategies as parallel_lib  # noqa: E402
from transformer.training import checkpoints, steps as training  # noqa: E402

config = configs.tiny_config()
model = training.create_model(config, seed=0)
optimizer = optax.sgd(1.0)
graphdef, state, rngs = training.init_train_state(model, optimizer, seed=0)
mesh = (1, 2, 2) if parallelism == 'gspmd' else (-1, 1, 1)
parallel = parallel_lib.make(parallelism, mesh=mesh)
fresh = state
step = parallel.compile_train_step(
  training.make_train_step(graphdef, optimizer, label_smoothing=0.1, axis_name=parallel.axis_name)
)
batch = synthetic_batch(8, 12, 40, min_fraction=0.0, uneven=True)
rows = 8 // jax.process_count()
local = {
  k: v[jax.process_index() * rows : (jax.process_index() + 1) * rows] for k, v in batch.items()
}
state, metrics = step(parallel.device_state(state), rngs, parallel.device_batch(local), 1.0)
if checkpoint_dir:
  saver = checkpoints.Checkpointer(checkpoint_dir, keep_best=False)
  saver.save(1, parallel.checkpoint_state(state))
  saver.wait()
  state = saver.restore(parallel.restore_target(fresh)).state
  saver.close()
host = parallel.host_state(state)
if jax.process_index() == 0:
  leaves = {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(host.params))}
  np.savez(out, loss=parallel.metrics(metrics)['loss'], devices=jax.device_count(), **leaves)
if num_processes > 1:
  jax.distributed.shutdown()
