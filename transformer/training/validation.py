"""A run's validation (teacher-forced losses and BLEU, every `eval_every` steps) and its final
test (each test beam size with the length penalty that validated best, on the best validated
parameters); over the `Run` that `transformer.training.run` builds and its `Evaluator`.
"""

from __future__ import annotations

import math
from typing import Any

import jax

from transformer.input_pipeline.corpus import DataError
from transformer.model.encoder_decoder import Transformer
from transformer.training import average as average_lib, evaluation
from transformer.training.run import Run


def _eval_losses(run: Run) -> dict[str, float]:
  """Validation NLL per token, accuracy and perplexity (teacher forcing, no dropout)."""
  sums = {'nll': 0.0, 'correct': 0.0, 'tokens': 0.0, 'smoothed': 0.0}
  for batch in run.data.eval_batches(
    run.config.eval_batch_size // jax.process_count(), run.config.eval_max_batches or 0
  ):
    # state.params is already in the step's replicated layout: no round trip through the host.
    out = run.parallel.metrics(
      run.eval_step(run.state.params, run.rngs, run.parallel.device_batch(batch))
    )
    sums = {k: sums[k] + out[k] for k in sums}
  if not sums['tokens']:  # prepare() refuses such a split; a loss over no token is no number
    raise DataError('the validation batches hold no target token')
  tokens = sums['tokens']
  loss = sums['nll'] / tokens
  return {
    'eval_loss': loss,
    'eval_accuracy': sums['correct'] / tokens,
    'eval_perplexity': math.exp(min(loss, 50.0)),
    'eval_smoothed_loss': sums['smoothed'] / tokens,
  }


def validate(run: Run, step: int, train_loss: float | None = None) -> dict[str, float]:
  """Validation losses and BLEU (on `bleu_sentences` pairs) of the current parameters; prints
  them with the train/validation gap (both label-smoothed losses) so over-fitting shows."""
  config = run.config
  metrics = _eval_losses(run)
  pairs = run.data.validation_pairs[: config.bleu_sentences]
  model = run.eval_model(run.parallel.host_state(run.state.params))
  bleu, signature, hypotheses = run.evaluator.bleu(model, pairs, beam_size=config.eval_beam_size)
  metrics['eval_bleu'] = bleu
  run.say(
    f'eval step {step}: loss {metrics["eval_loss"]:.4f}, accuracy {metrics["eval_accuracy"]:.4f}, '
    f'perplexity {metrics["eval_perplexity"]:.2f}, BLEU {bleu:.2f} on {len(pairs)} sentences '
    f'(beam {config.eval_beam_size}; {signature})'
  )
  if train_loss is not None:
    gap = metrics['eval_smoothed_loss'] - train_loss
    run.say(
      f'  train/validation gap: training loss {train_loss:.4f}, validation loss '
      f'{metrics["eval_smoothed_loss"]:.4f} (label-smoothed both): {gap:+.4f}'
    )
  run.say(f'  training data read so far: {run.batches.iterator.stats}')
  for (source, reference), hypothesis in list(zip(pairs, hypotheses))[: config.num_samples]:
    run.say(f'  source:     {source}\n  reference:  {reference}\n  hypothesis: {hypothesis}')
  run.writer.write(step, metrics)
  return metrics


def test(run: Run) -> dict[str, Any]:
  """Test-set BLEU with each of `config.test_beam_sizes`, of the parameters that validated best
  (the best checkpoint, or the average of the last `average_last` checkpoints if it is better),
  each beam size with the length penalty that validated best (`choose_decoding`)."""
  config = run.config
  params, description = _test_parameters(run)
  model = run.eval_model(params)
  results: dict[str, Any] = {'test_parameters': description}
  run.say(f'testing the {description}')
  length_penalties = {str(beam): config.length_penalty for beam in config.test_beam_sizes}
  if config.get('length_penalty_grid'):
    decoding = _choose_decoding(run, model)
    length_penalties, results['decoding'] = decoding['length_penalties'], decoding
  pairs = run.data.test_pairs[: config.test_max_sentences]
  for beam in config.test_beam_sizes:
    length_penalty = length_penalties[str(beam)]
    bleu, signature, _ = run.evaluator.bleu(
      model, pairs, beam_size=beam, length_penalty=length_penalty
    )
    name = 'greedy' if beam == 1 else f'beam{beam}'
    results[f'test_bleu_{name}'] = bleu
    at = '' if beam == 1 else f', length penalty {length_penalty}'
    run.say(f'test BLEU ({name}{at}, {len(pairs)} sentences): {bleu:.2f}  [{signature}]')
  return results


def _choose_decoding(run: Run, model: Transformer) -> dict[str, Any]:
  """The beam size and length penalty that validate best (the configured penalty first, so it
  wins ties); said in the log and kept in results.json, where `translate` reads them."""
  config = run.config
  grid = [config.length_penalty] + [
    a for a in config.length_penalty_grid if a != config.length_penalty
  ]
  pairs = run.data.validation_pairs[: config.bleu_sentences]
  run.say(
    f'choosing the beam size {tuple(config.test_beam_sizes)} and length penalty {tuple(grid)} '
    f'on {len(pairs)} validation sentences'
  )
  decoding = evaluation.choose_decoding(
    run.evaluator, model, pairs, config.test_beam_sizes, grid, run.say
  )
  run.say(
    f'chosen: beam {decoding["beam_size"]}, length penalty {decoding["length_penalty"]} '
    f'(validation BLEU {decoding["validation_bleu"]:.2f}); translate uses them by default'
  )
  return decoding


def _test_parameters(run: Run) -> tuple[Any, str]:
  """(parameters, what they are) of the best validated candidate."""
  final = run.parallel.host_state(run.state.params)
  best = run.checkpointer.restore_params(final, which='best')
  if best is None:
    candidates = [(float('-inf'), final, 'final parameters')]
  else:
    bleu = float('nan') if best.record.bleu is None else best.record.bleu
    candidates = [
      (bleu, best.state, f'best checkpoint (step {best.step}, validation BLEU {bleu:.2f})')
    ]
  if run.config.average_last:
    average, steps = average_lib.average_checkpoints(
      run.checkpointer, final, run.config.average_last
    )
    pairs = run.data.validation_pairs[: run.config.bleu_sentences]
    bleu, _, _ = run.evaluator.bleu(
      run.eval_model(average), pairs, beam_size=run.config.eval_beam_size
    )
    average_lib.save_average(run.checkpointer, average, steps, bleu)
    run.say(f'average of steps {steps}: validation BLEU {bleu:.2f}')
    candidates.append((bleu, average, f'average of steps {steps} (validation BLEU {bleu:.2f})'))
  _, params, description = max(candidates, key=lambda c: c[0])
  return params, description
