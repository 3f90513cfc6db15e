"""Our train step against PyTorch's `nn.Transformer` on the same configuration and batch.

    python -m benchmarks.compare_pytorch [--config=A|B] [--what=train|decode|both]
                                         [--dtype=float32|bfloat16] [--side=both|ours|pytorch]
                                         [--steps=10] [--json]

Both sides do the same work: shared embedding tied to the output layer, teacher forcing with
causal + padding masks, label-smoothed (0.1) cross-entropy over non-padding targets, Adam, dropout
0.1. They are timed alternately in one process (median of `--steps` after warm-up). PyTorch runs
eager and, when it works, under `torch.compile`. With `--dtype=bfloat16` the train step is mixed
precision on both sides: ours computes in bfloat16 with float32 parameters
(`TransformerConfig(dtype='bfloat16')`), PyTorch runs its forward pass and loss under
`torch.autocast('cpu', dtype=torch.bfloat16)`; decoding is always float32.

Decoding compares cached greedy search (32 random sentences, 64 generated tokens each, untrained
weights) with PyTorch's loop over the same `nn.Transformer` layers with a KV cache, checked
against its full forward pass. Without torch installed this prints how to get it
(`pip install torch==2.13.0` takes a CPU wheel on the project's CI machines) and exits 0.

In one process the two runtimes' thread pools interfere on a small CPU: on the 2-core EPYC,
PyTorch's libgomp threads slowed our train steps by ~15%, and `OMP_WAIT_POLICY=PASSIVE`, which
removes that, slowed PyTorch's many small decoding ops by ~25%. The ratio printed here is under
whatever environment you give it; for each side alone, run it twice, back to back, with
`--side=ours` and `--side=pytorch` (each prints its tokens/s and no ratio).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time

import jax
import numpy as np

from benchmarks.common import (
  CONFIGS,
  DTYPES,
  LEARNING_RATE,
  build_train_step,
  decoding_setup,
  synthetic_batch,
)


def torch_model(spec: dict):
  """PyTorch `nn.Transformer` (pre-LN, dropout 0.1) with a shared embedding tied to the output."""
  import torch
  from torch import nn

  m = spec['model']

  class TorchTransformer(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(m['vocab_size'], m['d_model'], padding_idx=0)
      nn.init.normal_(self.embed.weight, std=m['d_model'] ** -0.5)
      self.transformer = nn.Transformer(
        d_model=m['d_model'],
        nhead=m['num_heads'],
        num_encoder_layers=m['num_encoder_layers'],
        num_decoder_layers=m['num_decoder_layers'],
        dim_feedforward=m['d_ff'],
        dropout=0.1,
        batch_first=True,
        norm_first=True,
      )
      self.register_buffer('positions', torch.from_numpy(_sinusoids(512, m['d_model'])))
      self.scale = math.sqrt(m['d_model'])

    def embed_at(self, tokens, start: int = 0):
      return self.embed(tokens) * self.scale + self.positions[start : start + tokens.shape[1]]

    def forward(self, src, dec_in):
      causal = nn.Transformer.generate_square_subsequent_mask(dec_in.shape[1], device=src.device)
      h = self.transformer(
        self.embed_at(src),
        self.embed_at(dec_in),
        tgt_mask=causal,
        src_key_padding_mask=src == 0,
        tgt_key_padding_mask=dec_in == 0,
        memory_key_padding_mask=src == 0,
        tgt_is_causal=True,
      )
      return h @ self.embed.weight.T

  return TorchTransformer()


def torch_step_fn(
  spec: dict, batch: dict[str, np.ndarray], compile_model: bool, dtype: str = 'float32'
):
  import torch
  from torch import nn

  model = torch_model(spec)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
  loss_fn = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1)
  src = torch.from_numpy(batch['inputs']).long()
  targets = torch.from_numpy(batch['targets']).long()
  dec_in = torch.cat([torch.ones_like(targets[:, :1]), targets[:, :-1]], 1) * (targets != 0)
  forward = torch.compile(model) if compile_model else model
  # Mixed precision as PyTorch users write it: forward and loss under autocast, backward outside.
  precision = (
    (lambda: torch.autocast('cpu', dtype=torch.bfloat16))
    if dtype == 'bfloat16'
    else contextlib.nullcontext
  )

  def step():
    optimizer.zero_grad(set_to_none=True)
    with precision():
      logits = forward(src, dec_in)
      loss = loss_fn(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    loss.backward()
    optimizer.step()
    return loss.item()

  return step


def torch_greedy_cached(model, src, length: int, bos_id: int = 1, forced=None):
  """PyTorch's greedy loop with a KV cache: self-attention keys/values appended per step,
  cross-attention keys/values projected once per sentence (what `search.generate` does).

  `src` `[batch, src_length]` long -> `[batch, length]` generated tokens; with `forced`
  `[batch, length]` long, feeds those tokens instead and returns the logits
  `[batch, length, vocab]` (to check the cache against the full forward pass).
  """
  import torch
  import torch.nn.functional as F

  t = model.transformer
  d = model.embed.weight.shape[1]
  layers = t.decoder.layers
  heads = layers[0].self_attn.num_heads
  batch = src.shape[0]

  def split(x):  # [batch, len, d] -> [batch, heads, len, head_dim]
    return x.view(batch, -1, heads, d // heads).transpose(1, 2)

  def merge(x):
    return x.transpose(1, 2).reshape(batch, -1, d)

  with torch.inference_mode():
    memory = t.encoder(model.embed_at(src), src_key_padding_mask=src == 0)
    cross = []
    for layer in layers:
      w, b = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
      cross.append(
        (
          split(F.linear(memory, w[d : 2 * d], b[d : 2 * d])),
          split(F.linear(memory, w[2 * d :], b[2 * d :])),
        )
      )
    keep_source = (src != 0)[:, None, None, :]
    keys = [src.new_zeros((batch, heads, length, d // heads), dtype=memory.dtype) for _ in layers]
    values = [torch.zeros_like(k) for k in keys]
    token = torch.full((batch, 1), bos_id, dtype=torch.long)
    out, logits = [], []
    for step in range(length):
      x = model.embed_at(token, step)
      for i, layer in enumerate(layers):
        q, k, v = F.linear(
          layer.norm1(x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
        ).chunk(3, -1)
        keys[i][:, :, step : step + 1] = split(k)
        values[i][:, :, step : step + 1] = split(v)
        a = F.scaled_dot_product_attention(
          split(q), keys[i][:, :, : step + 1], values[i][:, :, : step + 1]
        )
        x = x + layer.self_attn.out_proj(merge(a))
        w, b = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
        q = F.linear(layer.norm2(x), w[:d], b[:d])
        a = F.scaled_dot_product_attention(split(q), *cross[i], attn_mask=keep_source)
        x = x + layer.multihead_attn.out_proj(merge(a))
        x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
      step_logits = t.decoder.norm(x) @ model.embed.weight.T
      token = step_logits.argmax(-1) if forced is None else forced[:, step : step + 1]
      out.append(token)
      logits.append(step_logits)
    return torch.cat(out, 1) if forced is None else torch.cat(logits, 1)


def check_cached_loop(model, src, bos_id: int) -> None:
  """The cached loop's logits equal the full forward pass's (so the PyTorch side is a fair loop)."""
  import torch

  forced = torch.randint(3, model.embed.weight.shape[0], src.shape)
  dec_in = torch.cat([torch.full_like(forced[:, :1], bos_id), forced[:, :-1]], 1)
  with torch.inference_mode():
    full = model(src, dec_in)
  cached = torch_greedy_cached(model, src, src.shape[1], bos_id, forced=forced)
  if not torch.allclose(cached, full, atol=1e-4, rtol=1e-4):
    raise AssertionError(
      f"PyTorch's cached loop disagrees with its forward pass: max difference "
      f'{(cached - full).abs().max():.2e}'
    )


def _sinusoids(length: int, d: int) -> np.ndarray:
  from transformer.model.layers import sinusoidal_table

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


def compare_train(args) -> dict:
  spec = CONFIGS[args.config]
  host_batch = synthetic_batch(spec['batch'], spec['length'], spec['model']['vocab_size'])
  tokens = int((host_batch['inputs'] > 0).sum() + (host_batch['targets'] > 0).sum())
  variants = {}
  if args.side != 'pytorch':
    _, _, state, rngs, step, batch, _ = build_train_step(
      args.config, args.dtype, devices=jax.devices()[:1]
    )
    holder = {'state': state}

    def ours():
      holder['state'], metrics = step(holder['state'], rngs, batch, LEARNING_RATE)
      jax.block_until_ready(metrics)

    variants['ours (JAX)'] = ours
  if args.side != 'ours':
    variants['PyTorch eager'] = torch_step_fn(
      spec, host_batch, compile_model=False, dtype=args.dtype
    )
    try:
      compiled = torch_step_fn(spec, host_batch, compile_model=True, dtype=args.dtype)
      compiled()
      variants['PyTorch torch.compile'] = compiled
    except Exception as e:  # noqa: BLE001  torch.compile needs a C++ toolchain and may fail
      print(f'torch.compile unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}')
  return _alternate(
    variants,
    tokens,
    args.steps,
    f'train step, config {args.config} ({args.dtype}), batch {spec["batch"]} x {spec["length"]}',
  )


def compare_decode(args) -> dict:
  """Cached greedy decoding of 32 random sentences to 64 tokens, ours against PyTorch's loop."""
  import torch

  from transformer.decoding import search

  batch, length = 32, 64
  config, model, src = decoding_setup(args.config, batch, length)
  reference_model = torch_model(CONFIGS[args.config]).eval()
  with torch.no_grad():  # as in decoding_setup: no EOS, so both sides generate `length` tokens
    reference_model.embed.weight[config.eos_id] = 0.0
  torch_src = torch.from_numpy(src).long()
  check_cached_loop(reference_model, torch_src, config.bos_id)

  def ours():
    jax.block_until_ready(search.generate(model, src, beam_size=1, max_new_tokens=length))

  variants = {}
  if args.side != 'pytorch':
    variants['ours (JAX)'] = ours
  if args.side != 'ours':
    variants['PyTorch eager'] = lambda: torch_greedy_cached(reference_model, torch_src, length)
  return _alternate(
    variants,
    batch * length,
    args.steps,
    f'cached greedy decoding, config {args.config}, {batch} sentences x {length} tokens',
  )


def _alternate(variants: dict, tokens: int, steps: int, title: str) -> dict:
  """Times the variants in alternating rounds so that all see the same machine conditions."""
  samples = {name: [] for name in variants}
  for _ in range(3):
    for name, fn in variants.items():
      samples[name].append(median_time(fn, max(steps // 3, 2)))
  results = {name: tokens / statistics.median(times) for name, times in samples.items()}
  print(title)
  for name, tps in results.items():
    print(f'  {name:<24} {tps:>10,.0f} tok/s')
  torch_results = [v for k, v in results.items() if k != 'ours (JAX)']
  ratio = None
  if 'ours (JAX)' in results and torch_results:
    ratio = results['ours (JAX)'] / max(torch_results)
    print(f'  ratio ours / fastest PyTorch: {ratio:.2f}x')
  return {'tokens_per_second': results, 'ratio': ratio}


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--config', choices=sorted(CONFIGS), default='A')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--what', choices=('train', 'decode', 'both'), default='both')
  parser.add_argument(
    '--dtype',
    choices=DTYPES,
    default='float32',
    help='train-step precision on both sides (decoding is float32)',
  )
  parser.add_argument(
    '--side',
    choices=('both', 'ours', 'pytorch'),
    default='both',
    help='time one side only, alone in this process (see the docstring)',
  )
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  try:
    import torch
  except ImportError:
    print(
      'PyTorch is not installed. To compare: pip install torch==2.13.0  (a CPU wheel here), then '
      'run this again.'
    )
    return 0
  print(
    f'{jax.devices()[0].device_kind}; torch {torch.__version__} with {torch.get_num_threads()} threads'
  )
  out = {'config': args.config, 'dtype': args.dtype}
  if args.what in ('train', 'both'):
    out['train'] = compare_train(args)
  if args.what in ('decode', 'both'):
    out['decode'] = compare_decode(args)
  if args.json:
    print(json.dumps(out))
  return 0


if __name__ == '__main__':
  sys.exit(main())
