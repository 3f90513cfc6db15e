"""Starting JAX's multi-process runtime: explicitly, or when a cluster environment is detected.

On a TPU pod slice, under SLURM or Open MPI (environments `jax.distributed.initialize()` reads
by itself), or with `JAX_COORDINATOR_ADDRESS` set, every process of the job must call
`jax.distributed.initialize()` before using JAX; without it a job of N processes becomes N
independent runs writing into one workdir. `initialize` does it whenever such an environment
says it holds more than one process (`CLUSTERS`); elsewhere (Kubernetes, a Cloud TPU VM pod
without `TPU_WORKER_HOSTNAMES`) give the flags or `JAX_COORDINATOR_ADDRESS`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

log = logging.getLogger(__name__)


def _count(name: str) -> int:
  try:
    return int(os.environ.get(name, '0'))
  except ValueError:
    return 0


# How each environment says that it runs more processes than this one (the variables its
# launcher sets, and that jax.distributed.initialize() then reads to find the others).
CLUSTERS = {
  'SLURM': lambda: bool(os.environ.get('SLURM_JOB_ID')) and _count('SLURM_NTASKS') > 1,
  'Open MPI': lambda: _count('OMPI_COMM_WORLD_SIZE') > 1,
  'TPU pod': lambda: len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1,
}


def detected_cluster() -> str | None:
  """The name of the multi-process cluster environment this process runs in, or None."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  return next((name for name, present in CLUSTERS.items() if present()), None)


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> str | None:
  """Starts the multi-process runtime when asked to or when a cluster is detected.

  Returns how it was started ('flags' or the environment's name), or None for one process.
  """
  if coordinator_address or num_processes:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return 'flags'
  cluster = detected_cluster()
  if cluster:
    log.info('multi-process environment detected (%s): starting jax.distributed', cluster)
    jax.distributed.initialize()
  return cluster


def process_zero_value(value: Any) -> Any:
  """Process 0's `value` (a NumPy scalar or array of the same shape on every process) on every
  process: what process 0 decides, the others follow. Itself in a one-process run."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return multihost_utils.broadcast_one_to_all(value)
