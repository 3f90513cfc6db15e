"""Starting JAX's multi-process runtime: explicitly, or when a cluster environment is detected.

On a TPU pod slice, under SLURM, Open MPI or Kubernetes (the environments `jax.distributed`
recognises itself), or with `JAX_COORDINATOR_ADDRESS` set, every process of the job must call
`jax.distributed.initialize()` before using JAX; without it a job of N processes becomes N
independent runs writing into one workdir. `initialize` does it whenever such an environment
holds more than one process.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def detected_cluster() -> str | None:
  """The name of the multi-process cluster environment this process runs in, or None."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  try:  # the environments jax.distributed.initialize() detects by itself
    from jax._src.clusters import ClusterEnv
  except ImportError:  # pragma: no cover - a jax without the registry: explicit flags only
    return None
  for environment in ClusterEnv._cluster_types:  # noqa: SLF001
    try:
      if (
        not environment.opt_in_only_method
        and environment.is_env_present()
        and environment.get_process_count() > 1
      ):
        return environment.__name__
    except Exception:  # noqa: BLE001  a half-configured environment is not a cluster
      continue
  return None


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
