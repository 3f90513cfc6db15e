"""This package's decoder against CTranslate2 on the same model, side by side, alternated.

    python -m benchmarks.decode_vs_ctranslate2 [--config=A] [--batch=32] [--length=64]
        [--rounds=3] [--workdir=runs/default] [--max_batch_tokens=N] [--json]

1. Fixed work: an untrained model of `--config` that never emits EOS (see
   `common.decoding_setup`), exported with `transformer.export`, `--batch` random sources,
   exactly `--length` generated tokens each: greedy and beam 4, ours in float32 against
   CTranslate2 in float32 and int8, every variant once per round, `--rounds` rounds; tokens/s of
   the median round and the ratio ours / CTranslate2 float32.
2. With `--workdir`: the whole embedded test split through the trained model, sorted batches
   of 32 (or of `--max_batch_tokens` padded source tokens, CTranslate2's `batch_type="tokens"`),
   real lengths, each sentence limited to its source length + 50 tokens as `translate` does:
   wall time, sentences/s, generated tokens/s and BLEU for ours and CTranslate2 (float32, int8),
   greedy and beam 4 (our beam ranks with `length_normalization='ctranslate2'`, CTranslate2's
   `length_penalty` the same α), and how many sentences CTranslate2 float32 translates to the
   very lines `translate` gives.

Both use the same CPU threads: CTranslate2 runs with intra_threads = the CPU count, JAX with its
default (every core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax

from benchmarks import common, ctranslate2_side
from tests.helpers import tiny_run
from transformer.decoding import search, translation
from transformer.export import ctranslate2_model
from transformer.model import params as params_lib
from transformer.training import evaluation


def _translators(model, vocabulary, directory: str) -> dict[str, object]:
  """CTranslate2 translators of `model` with float32 and int8 weights."""
  import ctranslate2

  params = params_lib.numpy_params(model)
  translators = {}
  for quantization in ('float32', 'int8'):
    spec = ctranslate2_model.transformer_spec(params, model.config, vocabulary)
    path = ctranslate2_model.convert(
      spec, os.path.join(directory, quantization), quantization=quantization
    )
    translators[quantization] = ctranslate2.Translator(
      path, device='cpu', compute_type=quantization, intra_threads=os.cpu_count(), inter_threads=1
    )
  return translators


def _fixed_work(args) -> dict[str, float]:
  config, model, src = common.decoding_setup(args.config, args.batch, args.length)
  tokens = [f't{i}' for i in range(config.vocab_size)]
  vocabulary = ctranslate2_model.Vocabulary(tokens, tokens, unk=tokens[3])
  with tempfile.TemporaryDirectory() as directory:
    translators = _translators(model, vocabulary, directory)
    sources = [[tokens[t] for t in row[:-1]] for row in src]  # CTranslate2 appends the EOS
    variants = {}
    for beam in (1, 4):
      variants[f'ours float32, beam {beam}'] = lambda beam=beam: search.generate(
        model, src, beam_size=beam, max_new_tokens=args.length
      )
      for kind, translator in translators.items():
        variants[f'CTranslate2 {kind}, beam {beam}'] = lambda translator=translator, beam=beam: (
          translator.translate_batch(
            sources,
            beam_size=beam,
            max_decoding_length=args.length,
            min_decoding_length=args.length,
            max_input_length=0,
          )
        )
    return _alternated(variants, args.rounds, args.batch * args.length)


def _alternated(variants: dict, rounds: int, tokens: int) -> dict[str, float]:
  """tokens/s of each variant (median over `rounds`, the variants alternated in each round)."""
  for fn in variants.values():
    jax.block_until_ready(fn())  # compilation and first-call costs out of the timing
  times = {name: [] for name in variants}
  for _ in range(rounds):
    for name, fn in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: tokens / statistics.median(t) for name, t in times.items()}


def _test_split(args) -> dict[str, dict[str, float]]:
  from transformer.training import workdir

  model, tokenizer, _ = workdir.load_model(args.workdir, which='best')
  pairs = tiny_run.embedded_pairs('test', 100_000)
  sources, references = [s for s, _ in pairs], [t for _, t in pairs]
  config = model.config
  ids = ctranslate2_side.source_ids(tokenizer, config, sources)
  limits = ctranslate2_side.limits_of(ids, config, 50)
  results = {}
  with tempfile.TemporaryDirectory() as directory:
    vocabulary = ctranslate2_model.vocabulary_of(tokenizer, config)
    translators = _translators(model, vocabulary, directory)
    target_ids = {token: i for i, token in enumerate(vocabulary.target)}
    for beam in (1, 4):
      ours = lambda beam=beam: translation.translate(
        model,
        tokenizer,
        sources,
        beam_size=beam,
        length_normalization='ctranslate2',
        max_batch_tokens=args.max_batch_tokens,
      )
      ours()  # compilation out of the timing
      runs = {'ours float32': ours}
      for kind, translator in translators.items():
        runs[f'CTranslate2 {kind}'] = lambda translator=translator, beam=beam: [
          tokenizer.decode([target_ids[t] for t in r.hypotheses[0]])
          for r in translator.translate_batch(
            [[vocabulary.source[t] for t in x] for x in ids],
            beam_size=beam,
            length_penalty=0.6,
            max_decoding_length=max(limits),
            min_decoding_length=0,
            max_input_length=0,
            max_batch_size=args.max_batch_tokens or 32,
            batch_type='tokens' if args.max_batch_tokens else 'examples',
          )
        ]
      for name, fn in runs.items():
        start = time.perf_counter()
        outputs = fn()
        seconds = time.perf_counter() - start
        generated = sum(len(tokenizer.encode(o)) + 1 for o in outputs)
        results[f'{name}, beam {beam}'] = {
          'seconds': seconds,
          'sentences_per_second': len(sources) / seconds,
          'tokens_per_second': generated / seconds,
          'bleu': evaluation.corpus_bleu(outputs, references)[0],
        }
      exact = ctranslate2_side.translate(
        translators['float32'], tokenizer, config, sources, beam, 0.6, limits=limits
      )
      results[f'same lines as translate, beam {beam}'] = {
        'sentences': sum(a == b for a, b in zip(ours(), exact)),
        'of': len(sources),
      }
  return results


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--config', choices=sorted(common.CONFIGS), default='A')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--length', type=int, default=64)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--workdir', default=None)
  parser.add_argument(
    '--max_batch_tokens', type=int, default=None, help='part 2: batches of padded source tokens'
  )
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  fixed = _fixed_work(args)
  print(
    f'1. config {args.config}: {args.batch} sources, {args.length} generated tokens each, '
    f'{os.cpu_count()} CPU threads, median of {args.rounds} alternated rounds'
  )
  for beam in (1, 4):
    reference = fixed[f'CTranslate2 float32, beam {beam}']
    for name in (
      f'ours float32, beam {beam}',
      f'CTranslate2 float32, beam {beam}',
      f'CTranslate2 int8, beam {beam}',
    ):
      print(
        f'  {name:<28} {fixed[name]:>9,.0f} tok/s   {fixed[name] / reference:.2f}x CTranslate2 float32'
      )
  report = {'fixed_work': fixed}
  if args.workdir:
    split = _test_split(args)
    print(f'2. the embedded test split through {args.workdir} (best checkpoint)')
    for name, r in split.items():
      if 'seconds' in r:
        print(
          f'  {name:<28} {r["seconds"]:6.1f} s  {r["sentences_per_second"]:6.1f} sent/s  '
          f'{r["tokens_per_second"]:7,.0f} tok/s  BLEU {r["bleu"]:.2f}'
        )
      else:
        print(f'  {name:<28} {r["sentences"]}/{r["of"]}')
    report['test_split'] = split
  if args.json:
    print(json.dumps(report))


if __name__ == '__main__':
  main()
