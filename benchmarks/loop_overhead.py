"""The training loop's cost beyond the train step itself: the real loop (train.py's) against the
bare compiled step on a batch of the same shape, on the same model.

    python -m benchmarks.loop_overhead [--corpus=embedded|short] [--steps=80] [--batch_size=32]
                                       [--max_length=64] [--json]

`embedded` trains on the embedded corpus; `short` on a generated corpus of 5-12-word sentences
(many examples per packed row: the input pipeline's hardest case). The model is config A of
`benchmarks.common` (d_model 256, 3+3 layers). The loop's step time is measured between its log
lines after the first 20 steps (compilation and start-up excluded, evaluation only at the end);
the bare step runs the same number of steps back to back on one batch from the same pipeline,
blocking only at the end, as the loop does between log lines.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax

from benchmarks import common
from benchmarks.input_pipeline import write_corpus
from configs import default
from transformer.parallel import strategies as parallel_lib
from transformer.training import loop as train_loop, recipe, steps as training
from transformer.training.config import model_config, optimizer_for


def run_config(args, folder: str):
  config = default.get_config()
  if args.corpus == 'short':
    tsv = os.path.join(folder, 'short.tsv')
    write_corpus(tsv, 100_000, short=True)
    config.dataset, config.source_lang, config.target_lang = 'local', 'src', 'tgt'
    config.local_files.update(train=tsv, validation=tsv, test=tsv)
    config.data_cache_dir, config.vocab_size = os.path.join(folder, 'prepared'), 4000
  for key in ('d_model', 'num_heads', 'd_ff', 'num_encoder_layers', 'num_decoder_layers'):
    config.model[key] = common.CONFIGS['A']['model'][key]
  config.batch_size, config.max_length = args.batch_size, args.max_length
  config.num_train_steps, config.log_every = args.steps, 10
  config.eval_every = config.checkpoint_every = args.steps
  config.bleu_sentences, config.test_max_sentences, config.test_beam_sizes = 8, 8, (1,)
  config.eval_max_batches, config.max_train_minutes = 1, None
  return config


def loop_step_seconds(workdir: str, after: int = 20) -> float:
  records = [r for r in _metrics(workdir) if 'train_loss' in r]
  first = next(r for r in records if r['step'] >= after)
  last = records[-1]
  return (last['time'] - first['time']) / (last['step'] - first['step'])


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def bare_step_seconds(config, workdir: str, steps: int) -> float:
  """Seconds per step of the same compiled step run back to back on one pipeline batch."""
  from transformer.training import data as run_data

  data = run_data.prepare(config, workdir)
  config = recipe.plan(config, data.measured).resolve(config)  # as the loop resolves it
  mconfig = model_config(config, data.tokenizer.vocab_size, **data.tokenizer.special_ids)
  parallel = parallel_lib.make(config.parallelism)
  optimizer, schedule = optimizer_for(config, mconfig.d_model)
  graphdef, state, rngs = training.init_train_state(
    training.create_model(mconfig, config.seed), optimizer, config.seed
  )
  step = parallel.compile_train_step(
    training.make_train_step(
      graphdef, optimizer, label_smoothing=config.label_smoothing, axis_name=parallel.axis_name
    )
  )
  batch = parallel.device_batch(next(data.train_batches()))
  state = parallel.device_state(state)
  for _ in range(5):
    state, metrics = step(state, rngs, batch, schedule(0))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, rngs, batch, schedule(0))
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--corpus', choices=('embedded', 'short'), default='embedded')
  parser.add_argument('--steps', type=int, default=80)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--max_length', type=int, default=64)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  folder = tempfile.mkdtemp(prefix='loop-overhead-')
  config = run_config(args, folder)
  workdir = os.path.join(folder, 'run')
  bare_before = bare_step_seconds(config, os.path.join(folder, 'bare'), args.steps - 20)
  train_loop.train_and_evaluate(config, workdir)
  loop = loop_step_seconds(workdir)
  bare_after = bare_step_seconds(config, os.path.join(folder, 'bare'), args.steps - 20)
  bare = (bare_before + bare_after) / 2
  result = {
    'corpus': args.corpus,
    'batch': f'{args.batch_size}x{args.max_length}',
    'loop_step_ms': 1e3 * loop,
    'bare_step_ms_before': 1e3 * bare_before,
    'bare_step_ms_after': 1e3 * bare_after,
    'overhead_percent': 100 * (loop / bare - 1),
    'loop_steps_per_second_vs_bare': bare / loop,
  }
  print(
    f'loop {result["loop_step_ms"]:.1f} ms/step; bare step {result["bare_step_ms_before"]:.1f} ms '
    f'(before) / {result["bare_step_ms_after"]:.1f} ms (after): overhead {result["overhead_percent"]:+.1f}%'
  )
  if args.json:
    print(json.dumps(result))


if __name__ == '__main__':
  main()
