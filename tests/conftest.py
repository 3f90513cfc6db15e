"""Test set-up: 8 simulated CPU devices (before JAX starts) and small shared fixtures."""

import os

# Multi-device code is tested on CPU by splitting the host into 8 XLA devices. Must be set before
# jax initialises its backends, hence here rather than in a fixture.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')

from tests.helpers import configs  # noqa: E402
from transformer import TransformerConfig  # noqa: E402


@pytest.fixture
def tiny_config() -> TransformerConfig:
  return configs.tiny_config()
