"""Model FLOPs per train step and hardware peaks, for tokens/s and MFU reporting."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from transformer.model import TransformerConfig

# Dense bf16 peaks (FLOP/s) of accelerators we know, by device_kind substring.
GPU_PEAK_BF16 = {'H200': 989e12, 'H100': 989e12, 'A100': 312e12, 'L4': 121e12, 'V100': 125e12}


def train_step_flops(config: TransformerConfig, batch: int, src_length: int, tgt_length: int) -> float:
  """Analytic matmul FLOPs of one forward+backward pass (×3 of forward), padding included.

  Forward: 2 FLOPs per multiply-add of every weight matrix at every position it is applied to,
  plus attention scores QKᵀ and the weighted sum of V (2·2·q·k·d_model per layer).
  """
  d, d_ff, v = config.d_model, config.d_ff, config.vocab_size
  s, t = batch * src_length, batch * tgt_length
  attention_proj = 4 * d * d
  ffn = 2 * d * d_ff
  encoder = config.num_encoder_layers * s * (attention_proj + ffn)
  # Decoder: self-attention (4d²), cross-attention Q/O on target and K/V on source, FFN.
  decoder = config.num_decoder_layers * (t * (attention_proj + 2 * d * d + ffn) + s * 2 * d * d)
  logits = t * d * v
  matmul_forward = 2 * (encoder + decoder + logits)
  attention_forward = 2 * 2 * batch * d * (
      config.num_encoder_layers * src_length**2 +
      config.num_decoder_layers * (tgt_length**2 + tgt_length * src_length))
  return 3.0 * (matmul_forward + attention_forward)


def measure_cpu_peak(n: int = 2048, repeats: int = 5, dtype: str = 'float32') -> float:
  """FLOP/s of an n×n×n `jnp.dot` under jit on the default device (best of `repeats`).

  For bfloat16 the product accumulates into float32 (`preferred_element_type`): that is the form
  XLA:CPU runs on its fast bf16 kernels (with a bf16 result it runs at about the float32 rate), so
  this is the best bf16 matmul rate the CPU gives through XLA.
  """
  a = jnp.ones((n, n), jnp.dtype(dtype))
  accumulate = jnp.float32 if jnp.dtype(dtype) == jnp.bfloat16 else None
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=accumulate))
  dot(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def device_peak(dtype: str = 'float32') -> tuple[float, str]:
  """(peak FLOP/s, how it was obtained) for the first device, for compute in `dtype`.

  Accelerators: the card's dense bf16 peak whatever `dtype` (MFU is quoted against it). CPU: a
  matmul of `dtype` measured now, since a CPU's bf16 and float32 rates differ (about 2× where it
  has AVX512-BF16) and its clock depends on the machine.
  """
  device = jax.devices()[0]
  if device.platform == 'gpu':
    for name, peak in GPU_PEAK_BF16.items():
      if name in device.device_kind:
        return peak * jax.local_device_count(), f'{device.device_kind} dense bf16 peak'
    return 0.0, f'unknown GPU {device.device_kind}'
  if device.platform == 'tpu':
    return 0.0, f'TPU {device.device_kind} (peak unknown here)'
  return measure_cpu_peak(dtype=dtype), f'measured {dtype} 2048³ jnp.dot on this CPU'
