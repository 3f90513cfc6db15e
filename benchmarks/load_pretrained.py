"""Loading a big M2M100/NLLB checkpoint: time and peak memory, on a random model of a real shape.

    python -m benchmarks.load_pretrained [--shape=nllb-600m] [--shard_mb=1000] [--dir=DIR]

Writes random weights of the shape (no download) as a sharded `model.safetensors.index.json`
directory, then loads them in a fresh process, once into float32 and once into bfloat16
parameters, and prints the load time, the process's peak resident memory and, for comparison,
the bytes of the loaded parameters. The peak resident memory counts the checkpoint's file pages
that safetensors maps and reads (clean, reclaimable: the kernel drops them under pressure); the
private memory (RssAnon, sampled every 20 ms) is what the load itself holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPES = {  # the configurations of the released checkpoints
  'nllb-600m': dict(d_model=1024, layers=12, heads=16, ffn=4096, vocab=256206),
  'nllb-1.3b': dict(d_model=1024, layers=24, heads=16, ffn=8192, vocab=256206),
  'm2m100-418m': dict(d_model=1024, layers=12, heads=16, ffn=4096, vocab=128112),
}


def hf_config(shape: dict) -> dict:
  return {
    'model_type': 'm2m_100',
    'vocab_size': shape['vocab'],
    'd_model': shape['d_model'],
    'encoder_layers': shape['layers'],
    'decoder_layers': shape['layers'],
    'encoder_attention_heads': shape['heads'],
    'decoder_attention_heads': shape['heads'],
    'encoder_ffn_dim': shape['ffn'],
    'decoder_ffn_dim': shape['ffn'],
    'activation_function': 'relu',
    'max_position_embeddings': 1024,
    'scale_embedding': True,
    'pad_token_id': 1,
    'eos_token_id': 2,
    'decoder_start_token_id': 2,
  }


def write_random(directory: str, shape: dict, shard_mb: int) -> int:
  """Writes config.json and random float32 weights in shards of about `shard_mb` MB; returns
  the number of parameters."""
  from flax import nnx
  from safetensors.numpy import save_file

  from transformer.model.encoder_decoder import abstract_model
  from transformer.pretrained import hf_bart, m2m100

  os.makedirs(directory, exist_ok=True)
  hf = hf_config(shape)
  config = m2m100.config_from_m2m100(hf)
  _, abstract, _ = abstract_model(config)
  rng = np.random.default_rng(0)
  random = lambda tree: {
    k: random(v) if isinstance(v, dict) else rng.standard_normal(v.shape, np.float32) * 0.02
    for k, v in tree.items()
  }
  tensors = hf_bart.state_dict(random(nnx.to_pure_dict(abstract)), config)
  weight_map, shard, size, number = {}, {}, 0, 0
  names = sorted(tensors)
  for i, name in enumerate(names):
    shard[name] = tensors.pop(name)
    size += shard[name].nbytes
    if size >= shard_mb * 1e6 or i == len(names) - 1:
      number += 1
      file = f'model-{number:05d}.safetensors'
      save_file(shard, os.path.join(directory, file), metadata={'format': 'pt'})
      weight_map.update({n: file for n in shard})
      shard, size = {}, 0
  with open(os.path.join(directory, hf_bart.SAFETENSORS_INDEX), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(hf, f)
  return sum(int(np.prod(v.shape)) for v in _leaves(nnx.to_pure_dict(abstract)))


def _leaves(tree):
  for value in tree.values():
    yield from _leaves(value) if isinstance(value, dict) else [value]


_MEASURE = """
import json, sys, threading, time
import jax
from flax import nnx
from transformer.pretrained import hf_bart, m2m100
directory, param_dtype = sys.argv[1], sys.argv[2]
def status(field):  # /proc/self/status, kB: VmHWM is this process's peak (not its parent's)
  for line in open('/proc/self/status'):
    if line.startswith(field + ':'):
      return int(line.split()[1]) / 1e6
jax.numpy.zeros(1).block_until_ready()
before = status('VmHWM')
anonymous = [status('RssAnon')]  # private memory, sampled: the mapped file pages are not in it
done = threading.Event()
def sample():
  while not done.wait(0.02):
    anonymous.append(status('RssAnon'))
threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
config = m2m100.config_from_m2m100(m2m100.read_config(directory), param_dtype=param_dtype)
model = hf_bart.load_model(hf_bart.StateDict(directory), config)
leaves = jax.block_until_ready(jax.tree.leaves(nnx.state(model, nnx.Param)))
seconds = time.perf_counter() - start
peak = status('VmHWM')
done.set()
nbytes = sum(x.nbytes for x in leaves)
print(json.dumps(dict(seconds=seconds, peak_gb=peak, before_gb=before, params_gb=nbytes / 1e9,
                      anonymous_peak_gb=max(anonymous), anonymous_before_gb=anonymous[0])))
"""


def measure(directory: str, param_dtype: str) -> dict:
  """Loads the directory in a fresh process: its time and peak resident memory (GB)."""
  out = subprocess.run(
    [sys.executable, '-c', _MEASURE, directory, param_dtype],
    capture_output=True,
    text=True,
    check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--shape', choices=sorted(SHAPES), default='nllb-600m')
  parser.add_argument('--shard_mb', type=int, default=1000)
  parser.add_argument('--dir', default=None, help='where to write the checkpoint (default: temp)')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  directory = args.dir or tempfile.mkdtemp(prefix='load_pretrained_')
  start = time.perf_counter()
  count = write_random(directory, SHAPES[args.shape], args.shard_mb)
  shards = len([f for f in os.listdir(directory) if f.endswith('.safetensors')])
  print(
    f'{args.shape}: {count:,} parameters written in {shards} shards to {directory} '
    f'({time.perf_counter() - start:.0f} s)'
  )
  for dtype in ('float32', 'bfloat16'):
    found = measure(directory, dtype)
    line = (
      f'  load into {dtype}: {found["seconds"]:.1f} s, parameters {found["params_gb"]:.2f} GB; '
      f'peak RSS {found["peak_gb"]:.2f} GB (before the load {found["before_gb"]:.2f}), of which '
      f'private memory {found["anonymous_peak_gb"]:.2f} GB (before '
      f"{found['anonymous_before_gb']:.2f}); the rest is the checkpoint's pages, mapped"
    )
    print(json.dumps({'shape': args.shape, 'dtype': dtype, **found}) if args.json else line)


if __name__ == '__main__':
  main()
