"""Test set-up: 8 simulated CPU devices (before JAX starts) and small shared fixtures."""

import os

from tests.helpers import tiny_run  # the standard library only: jax has not started

# Multi-device code is tested on CPU by splitting the host into 8 XLA devices, compiled fast
# (`tiny_run.FAST_COMPILE`). Must be set before jax initialises its backends, hence here rather
# than in a fixture.
os.environ.setdefault('XLA_FLAGS', tiny_run.xla_flags(8))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# The tests compile the same small programs many times over: in both xdist workers, in tests that
# build the same model again, and in the train.py, translate and notebook processes they start
# (which inherit this environment). jax's persistent compilation cache, keyed by the program, the
# jax version and the devices, lets each program compile once per checkout; a size limit turns on
# its file lock, which keeps concurrent writers and readers apart.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(_ROOT, '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(2 << 30))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')

from tests.helpers import configs  # noqa: E402
from transformer import TransformerConfig  # noqa: E402


@pytest.fixture
def tiny_config() -> TransformerConfig:
  return configs.tiny_config()
