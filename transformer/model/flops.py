"""Model FLOPs per train step and hardware peaks, for tokens/s and MFU reporting."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from transformer.model.encoder_decoder import TransformerConfig

# Dense matmul peaks (FLOP/s) per JAX device, from the vendors' data sheets, by a substring of
# `device.device_kind` (the first match wins, so the more specific names come first). 'float32'
# is the TF32 tensor-core rate where a GPU has one (XLA's default float32 matmul precision on
# those GPUs). A missing entry means the device has no such units (V100 and T4: no bfloat16).
# TPU v2/v3 expose each of a chip's two cores as a device: half the chip's peak.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
  ('H100 PCIe', {'bfloat16': 756e12, 'float16': 756e12, 'float32': 378e12}),
  ('H100', {'bfloat16': 989e12, 'float16': 989e12, 'float32': 494e12}),
  ('H200', {'bfloat16': 989e12, 'float16': 989e12, 'float32': 494e12}),
  ('GH200', {'bfloat16': 989e12, 'float16': 989e12, 'float32': 494e12}),
  ('B200', {'bfloat16': 2250e12, 'float16': 2250e12, 'float32': 1100e12}),
  ('A100', {'bfloat16': 312e12, 'float16': 312e12, 'float32': 156e12}),
  ('L40S', {'bfloat16': 362e12, 'float16': 362e12, 'float32': 183e12}),
  ('L4', {'bfloat16': 121e12, 'float16': 121e12, 'float32': 60e12}),
  ('A10G', {'bfloat16': 70e12, 'float16': 70e12, 'float32': 35e12}),
  ('V100', {'float16': 125e12, 'float32': 15.7e12}),
  ('T4', {'float16': 65e12, 'float32': 8.1e12}),
  ('TPU v6 lite', {'bfloat16': 918e12}),
  ('TPU v6e', {'bfloat16': 918e12}),
  ('TPU v5p', {'bfloat16': 459e12}),
  ('TPU v5 lite', {'bfloat16': 197e12}),
  ('TPU v5e', {'bfloat16': 197e12}),
  ('TPU v5', {'bfloat16': 459e12}),
  ('TPU v4', {'bfloat16': 275e12}),
  ('TPU v3', {'bfloat16': 61.5e12}),
  ('TPU v2', {'bfloat16': 23e12}),
)


def train_step_flops(
  config: TransformerConfig, batch: int, src_length: int, tgt_length: int
) -> float:
  """Analytic matmul FLOPs of one forward+backward pass (×3 of forward), padding included.

  Forward: 2 FLOPs per multiply-add of every weight matrix at every position it is applied to,
  plus attention scores QKᵀ and the weighted sum of V (2·2·q·k·d_model per layer).
  """
  d, d_ff, v = config.d_model, config.d_ff, config.target_vocabulary
  s, t = batch * src_length, batch * tgt_length
  attention_proj = 4 * d * d
  ffn = 2 * d * d_ff
  encoder = config.num_encoder_layers * s * (attention_proj + ffn)
  # Decoder: self-attention (4d²), cross-attention Q/O on target and K/V on source, FFN.
  decoder = config.num_decoder_layers * (t * (attention_proj + 2 * d * d + ffn) + s * 2 * d * d)
  logits = t * d * v
  matmul_forward = 2 * (encoder + decoder + logits)
  attention_forward = (
    2
    * 2
    * batch
    * d
    * (
      config.num_encoder_layers * src_length**2
      + config.num_decoder_layers * (tgt_length**2 + tgt_length * src_length)
    )
  )
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


def accelerator_peak(device_kind: str, dtype: str) -> tuple[float, str]:
  """(dense peak FLOP/s of one device for compute in `dtype`, where the number comes from);
  0.0 when unknown or when the device has no units for `dtype`."""
  for name, peaks in PEAKS:
    if name in device_kind:
      if dtype in peaks:
        return peaks[dtype], f'{device_kind} dense {dtype} peak'
      return 0.0, f'{device_kind} has no {dtype} matmul units (MFU not defined)'
  return 0.0, f'peak of {device_kind} unknown (MFU not reported)'


def device_peak(dtype: str, num_devices: int) -> tuple[float, str]:
  """(peak FLOP/s of the `num_devices` devices whose work is counted, how it was obtained).

  Count the FLOPs and the peak over the same devices: a loop that counts the global batch's
  FLOPs passes every device of every host. Accelerators: the data sheet's per-device peak times
  `num_devices`. CPU: a `dtype` matmul measured now (a CPU's bf16 and float32 rates differ, and
  its clock depends on the machine); simulated devices share one CPU, so the measured rate is
  counted once per process.
  """
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return (
      measure_cpu_peak(dtype=dtype) * jax.process_count(),
      f'measured {dtype} 2048³ jnp.dot on this CPU × {jax.process_count()} process(es)',
    )
  peak, source = accelerator_peak(device.device_kind, dtype)
  return peak * num_devices, f'{source} × {num_devices} device(s)'
