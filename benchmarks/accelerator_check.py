"""One command for a first run on an accelerator: is attention right, how fast do base and big
train, how fast does decoding run.

    python -m benchmarks.accelerator_check [--small] [--steps=10] [--json]

(a) attention: `jax.nn.dot_product_attention` ('cudnn' on a GPU, 'xla' everywhere) against the
    reference implementation, in bfloat16 with packed segments and a causal mask, forward and
    gradient; each must be within 2% of the float32 reference's scale (bfloat16 keeps 8
    significant bits; a wrong mask is off by the order of the values themselves);
(b) training: Transformer base and big in bfloat16 on synthetic packed batches over every local
    device: tokens/s (source + target non-padding, and target only) and MFU;
(c) decoding: greedy and beam 4 on the KV cache, 256 sentences;
(d) one JSON line with the device kind and every number.

`--small` runs tiny models (what the test suite runs on CPU).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from benchmarks import common
from transformer.decoding import search
from transformer.model import attention, flops, masks

TOLERANCE = 0.02  # of the float32 reference's largest magnitude


def check_attention(
  implementation: str, *, batch: int, length: int, heads: int, head_dim: int
) -> dict:
  """Errors of `implementation` in bf16 against the float32 reference, forward and gradient."""
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, cotangent = (jax.random.normal(key, (batch, length, heads, head_dim)) for key in keys)
  segments = jnp.asarray(common.synthetic_packed_batch(batch, length, 100)['inputs_segment_ids'])
  bias = masks.mask_to_bias(
    masks.combine(masks.segment_mask(segments, segments), masks.causal_mask(length))
  )

  def run(impl, dtype):
    def f(q, k, v):
      out = attention.dot_product_attention(
        q.astype(dtype), k.astype(dtype), v.astype(dtype), bias, implementation=impl
      )
      return (out.astype(jnp.float32) * cotangent).sum(), out.astype(jnp.float32)

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads

  reference_out, reference_grads = run('reference', jnp.float32)
  out, grads = run(implementation, jnp.bfloat16)
  relative = lambda a, b: float(jnp.abs(a - b).max() / jnp.abs(b).max())
  forward = relative(out, reference_out)
  gradient = max(relative(g, r) for g, r in zip(grads, reference_grads))
  return {
    'implementation': implementation,
    'forward_error': forward,
    'gradient_error': gradient,
    'passed': forward <= TOLERANCE and gradient <= TOLERANCE,
  }


def train_numbers(name: str, steps: int) -> dict:
  """bf16 train step of config `name` on packed synthetic batches over every local device."""
  config, parallel, state, rngs, step, batch, host = common.build_train_step(
    name, 'bfloat16', packed=True
  )
  holder = {'state': state}

  def one_step():
    holder['state'], metrics = step(holder['state'], rngs, batch, common.LEARNING_RATE)
    return metrics

  median, _ = common.timed(one_step, steps, warmup=2)
  rows, length = host['inputs'].shape
  peak, source = flops.device_peak('bfloat16', parallel.num_replicas)
  model_flops = flops.train_step_flops(config, rows, length, length)
  return {
    'config': name,
    'devices': parallel.num_replicas,
    'step_ms': 1e3 * median,
    'tokens_per_second': common.count_tokens(host) / median,
    'target_tokens_per_second': common.count_tokens(host, ('targets',)) / median,
    'mfu': model_flops / median / peak if peak else None,
    'peak_source': source,
  }


def decode_numbers(name: str, sentences: int, length: int, repeats: int) -> dict:
  _, model, src = common.decoding_setup(name, sentences, length, 'bfloat16')
  numbers = {'config': name, 'sentences': sentences, 'tokens_each': length}
  for beam in (1, 4):
    median, _ = common.timed(
      lambda beam=beam: search.generate(model, src, beam_size=beam, max_new_tokens=length), repeats
    )
    numbers[f'beam{beam}_seconds'] = median
    numbers[f'beam{beam}_tokens_per_second'] = sentences * length / median
  return numbers


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--small', action='store_true', help='tiny models (CPU, the test suite)')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  start = time.perf_counter()
  device = jax.devices()[0]
  implementations = ['xla'] + (['cudnn'] if device.platform == 'gpu' else [])
  shape = (
    dict(batch=2, length=64, heads=2, head_dim=16)
    if args.small
    else dict(batch=8, length=256, heads=8, head_dim=64)
  )
  result = {
    'device_kind': device.device_kind,
    'platform': device.platform,
    'local_devices': jax.local_device_count(),
    'jax': jax.__version__,
    'attention': [check_attention(i, **shape) for i in implementations],
  }
  configs = ('tiny',) if args.small else ('base', 'big')
  result['train'] = [train_numbers(name, args.steps) for name in configs]
  result['decode'] = decode_numbers(
    configs[0], 16 if args.small else 256, 16 if args.small else 64, 2
  )
  result['seconds'] = time.perf_counter() - start
  for check in result['attention']:
    print(
      f'attention {check["implementation"]:>6} bf16 vs float32 reference: forward {check["forward_error"]:.4f}, '
      f'gradient {check["gradient_error"]:.4f} (tolerance {TOLERANCE}) -> {"ok" if check["passed"] else "FAILED"}'
    )
  for t in result['train']:
    mfu = 'n/a' if t['mfu'] is None else f'{100 * t["mfu"]:.1f}%'
    print(
      f'train {t["config"]:>5} bf16 on {t["devices"]} x {device.device_kind}: {t["step_ms"]:.1f} ms/step, '
      f'{t["tokens_per_second"]:,.0f} tok/s ({t["target_tokens_per_second"]:,.0f} target), MFU {mfu}'
    )
  d = result['decode']
  print(
    f'decode {d["config"]}: {d["sentences"]} sentences x {d["tokens_each"]} tokens: greedy '
    f'{d["beam1_tokens_per_second"]:,.0f} tok/s, beam 4 {d["beam4_tokens_per_second"]:,.0f} tok/s'
  )
  print(json.dumps(result))
  if not all(check['passed'] for check in result['attention']):
    raise SystemExit(1)


if __name__ == '__main__':
  main()
