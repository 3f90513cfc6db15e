"""Our train step against PyTorch's `nn.Transformer` on the same configuration and batch.

    python benchmarks/compare_pytorch.py [--config=A|B] [--steps=10] [--json]

Both sides do the same work: shared embedding tied to the output layer, teacher forcing with
causal + padding masks, label-smoothed (0.1) cross-entropy over non-padding targets, Adam, dropout
0.1. They are timed alternately in one process (median of `--steps` after warm-up). PyTorch runs
eager and, when it works, under `torch.compile`. Without torch installed this prints how to get it
(`pip install torch==2.13.0` takes a CPU wheel on the project's CI machines) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.train_throughput import CONFIGS, build_step  # noqa: E402


def torch_step_fn(spec: dict, batch: dict[str, np.ndarray], compile_model: bool):
  import torch
  from torch import nn

  m = spec['model']

  class TorchTransformer(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(m['vocab_size'], m['d_model'], padding_idx=0)
      nn.init.normal_(self.embed.weight, std=m['d_model'] ** -0.5)
      self.transformer = nn.Transformer(
          d_model=m['d_model'], nhead=m['num_heads'], num_encoder_layers=m['num_encoder_layers'],
          num_decoder_layers=m['num_decoder_layers'], dim_feedforward=m['d_ff'], dropout=0.1,
          batch_first=True, norm_first=True)
      self.register_buffer('positions', torch.from_numpy(_sinusoids(512, m['d_model'])))

    def forward(self, src, dec_in):
      scale = math.sqrt(m['d_model'])
      s = self.embed(src) * scale + self.positions[: src.shape[1]]
      t = self.embed(dec_in) * scale + self.positions[: dec_in.shape[1]]
      causal = nn.Transformer.generate_square_subsequent_mask(dec_in.shape[1], device=src.device)
      h = self.transformer(s, t, tgt_mask=causal, src_key_padding_mask=src == 0,
                           tgt_key_padding_mask=dec_in == 0, memory_key_padding_mask=src == 0,
                           tgt_is_causal=True)
      return h @ self.embed.weight.T

  model = TorchTransformer()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
  loss_fn = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1)
  src = torch.from_numpy(batch['inputs']).long()
  targets = torch.from_numpy(batch['targets']).long()
  dec_in = torch.cat([torch.ones_like(targets[:, :1]), targets[:, :-1]], 1) * (targets != 0)
  forward = torch.compile(model) if compile_model else model

  def step():
    optimizer.zero_grad(set_to_none=True)
    logits = forward(src, dec_in)
    loss = loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    optimizer.step()
    return loss.item()

  return step


def _sinusoids(length: int, d: int) -> np.ndarray:
  from transformer.layers import sinusoidal_table
  return sinusoidal_table(length, d)


def median_time(fn, steps: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', choices=sorted(CONFIGS), default='A')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  try:
    import torch
  except ImportError:
    print('PyTorch is not installed. To compare: pip install torch==2.13.0  (a CPU wheel here), then '
          'run this again.')
    return 0

  config, spec, state, rngs, step, batch = build_step(args.config, 'float32')
  host_batch = {k: np.asarray(v) for k, v in batch.items()}
  tokens = int((host_batch['inputs'] > 0).sum() + (host_batch['targets'] > 0).sum())
  holder = {'state': state}

  def ours():
    holder['state'], metrics = step(holder['state'], rngs, batch)
    jax.block_until_ready(metrics)

  variants = {'ours (JAX)': ours, 'PyTorch eager': torch_step_fn(spec, host_batch, compile_model=False)}
  try:
    compiled = torch_step_fn(spec, host_batch, compile_model=True)
    compiled()
    variants['PyTorch torch.compile'] = compiled
  except Exception as e:  # noqa: BLE001  torch.compile needs a C++ toolchain and may fail
    print(f'torch.compile unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}')
  # Alternate rounds so that both sides see the same machine conditions.
  samples = {name: [] for name in variants}
  for _ in range(3):
    for name, fn in variants.items():
      samples[name].append(median_time(fn, max(args.steps // 3, 2)))
  results = {name: tokens / statistics.median(times) for name, times in samples.items()}
  best_torch = max(v for k, v in results.items() if k != 'ours (JAX)')
  print(f'config {args.config} on {jax.devices()[0].device_kind}, torch {torch.__version__}, '
        f'{torch.get_num_threads()} threads')
  for name, tps in results.items():
    print(f'  {name:<24} {tps:>10,.0f} tok/s')
  print(f'  ratio ours / fastest PyTorch: {results["ours (JAX)"] / best_torch:.2f}x')
  if args.json:
    print(json.dumps({'config': args.config, 'tokens_per_second': results,
                      'ratio': results['ours (JAX)'] / best_torch}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
