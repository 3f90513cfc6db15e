"""Greedy and beam search on the KV cache, jit-compiled with `lax.while_loop`.

The search functions are model-agnostic: they drive a `step_fn(tokens [n, 1], position, cache) ->
(logits [n, vocab], cache)` over a cache PyTree whose leading axis is the flattened `n` rows.
`generate` builds that step function for a `Transformer`: the encoder runs once per sentence, the
cross-attention keys/values are projected once, and every step feeds one token through the decoder.

Every sentence has its own limit on generated tokens (`limits`, EOS included), so what a sentence
becomes does not depend on the other sentences of its batch; the loop's static length only bounds
the buffers.

Beam search follows GNMT by default: hypotheses are ranked by log P / lp(len) with the length
penalty lp(len) = ((5 + len) / 6)^α, α = `length_penalty` (0.6; the name transformers and
CTranslate2 give α); `len` counts generated tokens including EOS.
`length_normalization='hf'` ranks by log P / len^α instead, as Hugging Face transformers does
(`length_penalty=α`), and `'ctranslate2'` ranks the same way but stops a sentence as CTranslate2
does (`length_penalty=α`, patience 1): once k of its hypotheses have ended. A hypothesis finishes
when its EOS extension ranks among the k best candidates (so beam size 1 is greedy decoding);
finished hypotheses stop growing; otherwise the loop exits early once no live beam can beat the
finished ones.

The pad token is never generated: with 'hf' its probability is removed after normalising, as
transformers' `bad_words_ids` removes it; otherwise the other tokens are renormalised, as in
CTranslate2 (whose exported models give pad no probability).

A target prefix (`prefix`) forces each sentence's first tokens: at those steps every other token
is excluded, so greedy search, sampling and every beam continue from the prefix, and the scores
include the prefix tokens' log-probabilities.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax
from flax import nnx
import jax
import jax.numpy as jnp

from transformer.decoding import ensemble as ensemble_lib
from transformer.decoding.batch import Batch, as_batch
from transformer.decoding.ensemble import Ensemble
from transformer.decoding.options import LENGTH_NORMALIZATIONS, DecodingOptions, with_overrides
from transformer.decoding.sampling import picker
from transformer.model.attention import CrossCache, SelfCache
from transformer.model.encoder_decoder import Transformer, shift_right

StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
# The score of an empty or excluded hypothesis slot: below any real log probability, yet finite
# so that sums and comparisons with it stay well defined.
EXCLUDED_SCORE = -1.0e7
LENGTH_BUCKET = 16  # static lengths are rounded up to a multiple of this: few compilations


def lp(length: jax.Array, length_penalty: float, normalization: str = 'gnmt') -> jax.Array:
  """GNMT's lp(length) = ((5 + length) / 6)^α, or length^α (`'hf'` and `'ctranslate2'`, as
  transformers' and CTranslate2's beam searches), with α = `length_penalty` (the name
  transformers and CTranslate2 give it)."""
  length = jnp.asarray(length, jnp.float32)
  if normalization in ('hf', 'ctranslate2'):
    return jnp.maximum(length, 1.0) ** length_penalty
  return ((5.0 + length) / 6.0) ** length_penalty


def argmax_last(logits: jax.Array) -> jax.Array:
  """`logits.argmax(-1)` (first maximum on ties) as int32, in two plain reductions.

  XLA:CPU lowers argmax to one variadic (value, index) reduce, which is slower than max followed
  by min-index over the positions that hold the max.
  """
  vocab = logits.shape[-1]
  best = logits.max(-1, keepdims=True)
  index = jnp.min(jnp.where(logits == best, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)
  return jnp.minimum(index, vocab - 1)  # all-NaN rows: no element equals the max


def cache_lengths(buffer_length: int) -> list[int]:
  """The lengths the decoding cache grows through: 16, 32, 64, ... and then `buffer_length`.

  A step attends to (and beam search reorders) the cache's whole length, so the search runs in
  segments, each over a cache of the next length: its cost follows the tokens generated so far,
  not the buffer, at the price of one traced copy of the step per segment."""
  lengths, length = [], LENGTH_BUCKET
  while length < buffer_length:
    lengths.append(length)
    length *= 2
  return lengths + [buffer_length]


def _loop_in_segments(
  cond: Callable[[Any], jax.Array],
  body: Callable[[Any], Any],
  carry: Any,
  *,
  step: Callable[[Any], jax.Array],
  buffer_length: int,
  regrow: Callable[[Any, int], Any] | None,
) -> Any:
  """`lax.while_loop(cond, body, carry)`, in segments: one per `cache_lengths(buffer_length)`,
  each running while `step(carry)` is below its length, after `regrow(carry, length)` has made
  room for it in the cache (`regrow=None`: one loop over the whole buffer)."""
  lengths = [buffer_length] if regrow is None else cache_lengths(buffer_length)
  for end in lengths:
    carry = carry if regrow is None else regrow(carry, end)
    carry = jax.lax.while_loop(lambda c, end=end: (step(c) < end) & cond(c), body, carry)
  return carry


def _prefix_at(
  prefix: jax.Array | None, step: jax.Array, pad_id: int
) -> tuple[jax.Array, jax.Array] | None:
  """(`[batch]` bool: the step is inside the sentence's prefix, `[batch]` its forced token), or
  None without a prefix. `prefix` `[batch, width]` is right-padded with `pad_id`."""
  if prefix is None:
    return None
  token = prefix[:, jnp.minimum(step, prefix.shape[1] - 1)]
  return (step < prefix.shape[1]) & (token != pad_id), token


@dataclasses.dataclass(frozen=True)
class Rules:
  """What every search of a batch obeys, greedy, sampling and beam search alike.

  Attributes:
    buffer_length: the loop's static length (the output's).
    bos_id, eos_id, pad_id: the decoder's first input, the end, what follows the end.
    limits: `[batch]` tokens each sentence may generate (EOS included); None: `buffer_length`.
    suppress: `[vocab]` bool, tokens never generated (e.g. a pad token that is a real id).
    first: `[batch]` each sentence's first token, scored log 1 = 0 (transformers'
      `forced_bos_token_id`: a many-to-many model's target language), or None.
    prefix: `[batch, width]` tokens each sentence starts with, right-padded with `pad_id` and
      scored with their log probabilities, or None.
    forced_eos: EOS at each sentence's last allowed step, scored 0 (transformers'
      `forced_eos_token_id`).
  """

  buffer_length: int
  bos_id: int
  eos_id: int
  pad_id: int = 0
  limits: jax.Array | None = None
  suppress: jax.Array | None = None
  first: jax.Array | None = None
  prefix: jax.Array | None = None
  forced_eos: bool = False

  def limits_of(self, batch_size: int) -> jax.Array:
    """`[batch]` int32 per-sentence token limits, at most `buffer_length`."""
    if self.limits is None:
      return jnp.full((batch_size,), self.buffer_length, jnp.int32)
    return jnp.minimum(jnp.asarray(self.limits, jnp.int32), self.buffer_length)

  def force(self, scores: jax.Array, step: jax.Array, limits: jax.Array) -> jax.Array:
    """`scores` `[batch, beams, vocab]` (log probabilities or logits) with every token but the
    forced one excluded (-inf) in the sentences that have one at `step`."""
    batch = scores.shape[0]
    if self.first is not None:
      scores = _only(scores, jnp.full((batch,), step == 0), self.first, scored=False)
    in_prefix = _prefix_at(self.prefix, step, self.pad_id)
    if in_prefix is not None:
      scores = _only(scores, *in_prefix, scored=True)
    if self.forced_eos:
      scores = _only(scores, step + 1 >= limits, jnp.full((batch,), self.eos_id), scored=False)
    return scores


def _only(scores: jax.Array, forcing: jax.Array, token: jax.Array, scored: bool) -> jax.Array:
  """`scores` `[batch, beams, vocab]` where, in the sentences `forcing` `[batch]`, only `token`
  `[batch]` stays: with its score (`scored`) or with log 1 = 0."""
  is_token = (jnp.arange(scores.shape[-1])[None, :] == token[:, None])[:, None, :]
  allowed = jnp.where(is_token, scores if scored else 0.0, -jnp.inf)
  return jnp.where(forcing[:, None, None], allowed, scores)


def greedy_search(
  step_fn: StepFn,
  cache: Any,
  batch_size: int,
  rules: Rules,
  *,
  grow: Callable[[Any, int], Any] | None = None,
  pick: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> jax.Array:
  """Picks the most likely token at each step (or, with `pick`, what it picks).

  Args:
    step_fn: `(tokens [batch, 1], position, cache) -> (logits [batch, vocab], cache)`.
    rules: the limits, special ids, suppressed and forced tokens (`Rules`).
    grow: `(cache, length) -> cache` with room for `length` tokens; given, the cache starts at
      the first of `cache_lengths(buffer_length)` and grows through them.
    pick: `(logits [batch, vocab], step) -> [batch]` tokens, e.g. `sampling.picker` (default:
      the argmax).

  Returns:
    `[batch, buffer_length]` int32 generated tokens (EOS included), `pad_id` after the end.
  """
  limits, length = rules.limits_of(batch_size), rules.buffer_length

  def cond(carry):
    i, _, _, finished = carry
    return (i < length) & ~finished.all()

  def body(carry):
    i, tokens, cache, finished = carry
    previous = jnp.where(i == 0, rules.bos_id, tokens[:, jnp.maximum(i - 1, 0)])
    logits, cache = step_fn(previous[:, None], i, cache)
    if rules.suppress is not None:
      logits = jnp.where(rules.suppress, -jnp.inf, logits)
    logits = rules.force(logits[:, None], i, limits)[:, 0]
    token = argmax_last(logits) if pick is None else pick(logits, i)
    token = jnp.where(finished, rules.pad_id, token)
    tokens = tokens.at[:, i].set(token)
    return i + 1, tokens, cache, finished | (token == rules.eos_id) | (i + 1 >= limits)

  tokens = jnp.full((batch_size, length), rules.pad_id, jnp.int32)
  carry = (jnp.array(0), tokens, cache, limits <= 0)
  regrow = None if grow is None else lambda c, n: (c[0], c[1], grow(c[2], n), c[3])
  carry = _loop_in_segments(
    cond, body, carry, step=lambda c: c[0], buffer_length=length, regrow=regrow
  )
  return carry[1]


@flax.struct.dataclass
class BeamState:
  """The beam search's loop state (`k` beams per sentence, `L` = the loop's `buffer_length`).

  alive_*: the k best hypotheses that have not ended; finished_*: the k best that have (ranked
  by length-penalised score); `cache` holds the decoder state of the alive beams, rows
  `[batch * k, ...]` with the beams of a sentence adjacent.
  """

  step: jax.Array  # [] the position being generated
  alive_seqs: jax.Array  # [batch, k, L] int32
  alive_log_probs: jax.Array  # [batch, k] float32, log P of each alive hypothesis
  finished_seqs: jax.Array  # [batch, k, L] int32
  finished_scores: jax.Array  # [batch, k] float32, log P / lp(length)
  finished_flags: jax.Array  # [batch, k] bool, whether the slot holds a finished hypothesis
  done: jax.Array  # [batch] bool, the sentence's search is over (its state no longer changes)
  cache: Any


def _initial_beams(
  cache: Any, batch_size: int, k: int, buffer_length: int, pad_id: int
) -> BeamState:
  seqs = jnp.full((batch_size, k, buffer_length), pad_id, jnp.int32)
  # Only the first beam is live at the start; the others are copies that must not be chosen.
  alive_log_probs = jnp.tile(jnp.array([0.0] + [EXCLUDED_SCORE] * (k - 1)), (batch_size, 1))
  return BeamState(
    step=jnp.array(0),
    alive_seqs=seqs,
    alive_log_probs=alive_log_probs,
    finished_seqs=seqs,
    finished_scores=jnp.full((batch_size, k), EXCLUDED_SCORE),
    finished_flags=jnp.zeros((batch_size, k), bool),
    done=jnp.zeros((batch_size,), bool),
    cache=cache,
  )


def _gather_beams(tree: Any, indices: jax.Array, batch_size: int, beam_size: int) -> Any:
  """Reorders `[batch * beam, ...]` leaves by `indices` `[batch, beam]` (beam ids per sentence)."""
  flat = (indices + jnp.arange(batch_size)[:, None] * beam_size).reshape(-1)

  def gather(x):
    if x.ndim == 0:  # the shared cache index
      return x
    # The indices are in range by construction; 'clip' gathers at copy speed on XLA:CPU, where
    # the default 'fill' mode's bounds handling took twice as long.
    return jnp.take(x, flat, axis=0, mode='clip')

  return jax.tree.map(gather, tree)


def _keep_alive(
  top_seqs: jax.Array,
  top_log_probs: jax.Array,
  top_beams: jax.Array,
  is_eos: jax.Array,
  cache: Any,
  k: int,
) -> dict[str, Any]:
  """The best k of the 2k candidates that do not end in EOS, and their reordered cache."""
  log_probs, pick = jax.lax.top_k(jnp.where(is_eos, EXCLUDED_SCORE, top_log_probs), k)
  seqs = jnp.take_along_axis(top_seqs, pick[:, :, None], axis=1)
  cache = _gather_beams(cache, jnp.take_along_axis(top_beams, pick, axis=1), top_seqs.shape[0], k)
  return {'alive_seqs': seqs, 'alive_log_probs': log_probs, 'cache': cache}


def _merge_finished(
  state: BeamState, top_seqs: jax.Array, scores: jax.Array, ends: jax.Array
) -> dict[str, jax.Array]:
  """The best k of the finished hypotheses so far and the candidates that just ended (`ends`,
  with length-penalised `scores`)."""
  k = state.finished_scores.shape[1]
  all_seqs = jnp.concatenate([state.finished_seqs, top_seqs], axis=1)
  all_flags = jnp.concatenate([state.finished_flags, ends], axis=1)
  all_scores = jnp.concatenate(
    [state.finished_scores, jnp.where(ends, scores, EXCLUDED_SCORE)], axis=1
  )
  best, pick = jax.lax.top_k(jnp.where(all_flags, all_scores, EXCLUDED_SCORE), k)
  return {
    'finished_seqs': jnp.take_along_axis(all_seqs, pick[:, :, None], axis=1),
    'finished_scores': best,
    'finished_flags': jnp.take_along_axis(all_flags, pick, axis=1),
  }


def beam_search(
  step_fn: StepFn,
  cache: Any,
  batch_size: int,
  rules: Rules,
  *,
  beam_size: int,
  length_penalty: float = DecodingOptions.length_penalty,
  length_normalization: str = DecodingOptions.length_normalization,
  beam_invariant_cache: Any = None,
  grow: Callable[[Any, int], Any] | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Beam search with a length penalty (GNMT's by default; see the module docstring).

  Args:
    step_fn: `(tokens [batch*beam, 1], position, cache) -> (logits [batch*beam, vocab], cache)`.
      With `beam_invariant_cache` given, the cache argument is the pair (cache, invariant).
    cache: per-row state with leading axis `batch * beam` (rows of one sentence are adjacent).
    rules: the limits, special ids, suppressed and forced tokens (`Rules`): only a forced token
      extends a beam at its step.
    length_normalization: 'gnmt', 'hf' or 'ctranslate2'.
    beam_invariant_cache: state that is the same for every beam of a sentence (e.g. the encoder's
      keys/values): passed along but never reordered.
    grow: `(cache, length) -> cache` with room for `length` tokens (see `greedy_search`).

  Returns:
    sequences `[batch, beam, buffer_length]` (best first; `pad_id` after EOS) and their scores
    `[batch, beam]` (`EXCLUDED_SCORE` for empty slots). A sentence with no finished hypothesis
    returns its alive beams, scored at its limit's length penalty.
  """
  search = _BeamSearch(
    call=_with_invariant(step_fn, beam_invariant_cache),
    rules=rules,
    limits=rules.limits_of(batch_size),
    length_penalty=length_penalty,
    normalization=length_normalization,
    batch_size=batch_size,
    k=beam_size,
  )
  initial = _initial_beams(cache, batch_size, beam_size, rules.buffer_length, rules.pad_id)
  state = _loop_in_segments(
    lambda state: search.searching(state).any(),
    search.step,
    initial,
    step=lambda state: state.step,
    buffer_length=rules.buffer_length,
    regrow=None if grow is None else lambda state, n: state.replace(cache=grow(state.cache, n)),
  )
  return search.results(state)


@dataclasses.dataclass(frozen=True)
class _BeamSearch:
  """One beam search's settings, and the three things it does with a `BeamState`: tell which
  sentences are still searching, take a step, read the results (see `beam_search`)."""

  call: StepFn
  rules: Rules
  limits: jax.Array  # [batch] tokens each sentence may generate
  length_penalty: float
  normalization: str
  batch_size: int
  k: int

  def __post_init__(self):
    if self.normalization not in LENGTH_NORMALIZATIONS:
      raise ValueError(
        f'length_normalization must be one of {LENGTH_NORMALIZATIONS}, got {self.normalization!r}'
      )

  def penalty(self, length: jax.Array) -> jax.Array:
    return lp(length, self.length_penalty, self.normalization)

  def searching(self, state: BeamState) -> jax.Array:
    """`[batch]` bool: the sentence is not done, is below its limit and may still improve: it has
    fewer than k finished hypotheses, or its best alive one beats the worst finished one at the
    length penalty it can best reach (GNMT: at its limit; 'hf': at the current length, the
    heuristic of transformers' beam search; 'ctranslate2': never, it stops at k finished).
    Once false, it stays false."""
    bound = self.limits if self.normalization == 'gnmt' else jnp.maximum(state.step, 1)
    best_alive = state.alive_log_probs[:, 0] / self.penalty(bound)
    improvable = ~state.finished_flags.all(-1)
    if self.normalization != 'ctranslate2':
      improvable |= best_alive > state.finished_scores.min(-1)
    return ~state.done & improvable & (state.step < self.limits)

  def _candidates(self, state: BeamState) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
    """The 2k best extensions of the alive beams by one token (enough that k of them do not end
    in EOS): their sequences, log P, parent beams, and the decoder cache after the step."""
    i, k = state.step, self.k
    previous = jnp.where(i == 0, self.rules.bos_id, state.alive_seqs[:, :, jnp.maximum(i - 1, 0)])
    logits, cache = self.call(previous.reshape(-1, 1), i, state.cache)
    log_probs = _log_probs(logits, self.rules.suppress, self.normalization)
    log_probs = self.rules.force(log_probs.reshape(self.batch_size, k, -1), i, self.limits)
    vocab = log_probs.shape[-1]
    candidates = (state.alive_log_probs[:, :, None] + log_probs).reshape(self.batch_size, -1)
    top_log_probs, top_indices = jax.lax.top_k(candidates, 2 * k)
    top_beams, top_tokens = top_indices // vocab, (top_indices % vocab).astype(jnp.int32)
    top_seqs = jnp.take_along_axis(state.alive_seqs, top_beams[:, :, None], axis=1)
    return top_seqs.at[:, :, i].set(top_tokens), top_log_probs, top_beams, cache

  def step(self, state: BeamState) -> BeamState:
    """Extends every alive beam by every token; keeps the k best alive candidates and merges the
    ones that end into the k best finished. A hypothesis ends only if its EOS extension ranks
    among the top k (as in fairseq), so beam size 1 is exactly greedy decoding; with 'hf' and
    'ctranslate2' normalisation the top k also end at the sentence's last allowed step, as
    transformers' and CTranslate2's beam searches end them. A sentence that is done keeps its
    state, as if it were searched alone."""
    i, rows = state.step, self.searching(state)
    top_seqs, top_log_probs, top_beams, cache = self._candidates(state)
    at_limit = (i + 1 >= self.limits)[:, None] if self.normalization != 'gnmt' else False
    stops = (top_seqs[:, :, i] == self.rules.eos_id) | at_limit
    # Candidates excluded by a prefix (-inf) never end, even when their token is EOS.
    ranked = (jnp.arange(2 * self.k) < self.k)[None, :] & jnp.isfinite(top_log_probs)
    ends = stops & ranked
    alive = _keep_alive(top_seqs, top_log_probs, top_beams, stops, cache, self.k)
    finished = _merge_finished(state, top_seqs, top_log_probs / self.penalty(i + 1), ends)
    kept = {
      name: jnp.where(rows.reshape((-1,) + (1,) * (value.ndim - 1)), value, getattr(state, name))
      for name, value in {**alive, **finished}.items()
      if name != 'cache'
    }
    return state.replace(step=i + 1, cache=alive['cache'], done=~rows, **kept)

  def results(self, state: BeamState) -> tuple[jax.Array, jax.Array]:
    """The finished hypotheses, or the alive ones (scored at the limit's length penalty) for a
    sentence where none finished."""
    none_finished = ~state.finished_flags.any(-1)
    alive_scores = state.alive_log_probs / self.penalty(self.limits)[:, None]
    sequences = jnp.where(none_finished[:, None, None], state.alive_seqs, state.finished_seqs)
    return sequences, jnp.where(none_finished[:, None], alive_scores, state.finished_scores)


def _log_probs(logits: jax.Array, suppress: jax.Array | None, normalization: str) -> jax.Array:
  """`[rows, vocab]` log-probabilities of the next token, the `suppress`ed tokens excluded:
  renormalised over the others, or with 'hf' removed after normalising, as transformers'
  `bad_words_ids` removes them (so that scores equal `generate`'s; CTranslate2 renormalises)."""
  logits = logits.astype(jnp.float32)
  if suppress is None:
    return jax.nn.log_softmax(logits)
  if normalization == 'hf':
    return jnp.where(suppress, -jnp.inf, jax.nn.log_softmax(logits))
  return jax.nn.log_softmax(jnp.where(suppress, -jnp.inf, logits))


def _with_invariant(step_fn: StepFn, invariant: Any) -> StepFn:
  """`step_fn` over the reordered cache alone, with the beam-invariant part passed along."""
  if invariant is None:
    return step_fn

  def call(tokens, i, cache):
    logits, (cache, _) = step_fn(tokens, i, (cache, invariant))
    return logits, cache

  return call


@dataclasses.dataclass(frozen=True)
class DecoderSteps:
  """A decoder fed one token per row (`beams` adjacent rows per sentence) over its caches: what
  the searches drive.

  Attributes:
    call: `(tokens [rows, 1], position, (self_cache, cross_cache)) -> (logits [rows, vocab],
      (self_cache, cross_cache))`; only the self-attention caches change from step to step.
    self_cache: the self-attention caches, reordered with the beams; they start with room for
      the first of `cache_lengths(buffer_length)` tokens.
    cross_cache: the cross-attention keys and values, shared by a sentence's beams.
    grow: `(self_cache, length) -> self_cache` with room for `length` tokens.
  """

  call: StepFn
  self_cache: Any
  cross_cache: Any
  grow: Callable[[Any, int], Any]

  def grow_pair(self, caches: tuple[Any, Any], length: int) -> tuple[Any, Any]:
    """`grow` for a search that carries both caches as its one cache (greedy search)."""
    return self.grow(caches[0], length), caches[1]


def decoder_steps(
  model: Transformer, src_tokens: jax.Array, buffer_length: int, beams: int = 1
) -> DecoderSteps:
  """Encodes `src_tokens` `[batch, src_length]` (once per sentence, not per step or per beam),
  fills `model`'s caches and returns its `DecoderSteps`."""
  if buffer_length > model.config.max_positions:
    raise ValueError(
      f'buffer_length={buffer_length} exceeds the positional encoding length '
      f'max_positions={model.config.max_positions}'
    )
  encoded = model.encode(src_tokens)
  model.init_cache(encoded, cache_lengths(buffer_length)[0], beams)
  graphdef, self_cache, cross_cache, rest = nnx.split(model, SelfCache, CrossCache, ...)
  rows = src_tokens.shape[0] * beams

  def call(tokens, position, caches):
    self_cache, cross_cache = caches
    m = nnx.merge(graphdef, self_cache, cross_cache, rest)
    logits = m.decode(
      tokens, encoded, src_tokens, tgt_positions=jnp.full((rows, 1), position), use_cache=True
    )
    return logits[:, 0], (nnx.state(m, SelfCache), cross_cache)

  def grow(self_cache, length: int):
    m = nnx.merge(graphdef, self_cache, cross_cache, rest)
    for layer in m.decoder.layers:
      layer.self_attention.grow_cache(length)
    return nnx.state(m, SelfCache)

  return DecoderSteps(call, self_cache, cross_cache, grow)


def ensemble_steps(members: Sequence[DecoderSteps]) -> DecoderSteps:
  """The `DecoderSteps` of an ensemble: each member steps with its own caches (tuples of the
  members' caches) and the step returns the members' averaged log-probabilities
  (`ensemble.average_log_probs`); one member's steps are its own."""
  if len(members) == 1:
    return members[0]

  def call(tokens, position, caches):
    selfs, crosses = caches
    outputs = [m.call(tokens, position, (s, c)) for m, s, c in zip(members, selfs, crosses)]
    log_probs = ensemble_lib.average_log_probs([logits for logits, _ in outputs])
    return log_probs, (tuple(cache[0] for _, cache in outputs), crosses)

  def grow(selfs, length: int):
    return tuple(m.grow(s, length) for m, s in zip(members, selfs))

  selfs, crosses = tuple(m.self_cache for m in members), tuple(m.cross_cache for m in members)
  return DecoderSteps(call, selfs, crosses, grow)


def _suppressed(config) -> jax.Array:
  """`[vocab]` bool: the pad token is never generated (it is never a training label)."""
  return jnp.arange(config.target_vocabulary) == config.pad_id


@functools.partial(jax.jit, static_argnames=('graphdefs', 'settings', 'buffer_length'))
def _generate(
  graphdefs: tuple[nnx.GraphDef, ...],
  states: tuple[nnx.State, ...],
  batch: Batch,
  limits: jax.Array,
  length_penalty: jax.Array,
  *,
  settings: DecodingOptions,
  buffer_length: int,
) -> tuple[jax.Array, jax.Array]:
  members = [nnx.merge(graphdef, state) for graphdef, state in zip(graphdefs, states)]
  for member in members:
    member.eval()
  options = dataclasses.replace(settings, length_penalty=length_penalty)  # traced: any value
  return search_model(members, batch, limits, buffer_length=buffer_length, options=options)


def search_model(
  model: Transformer | Sequence[Transformer],
  batch: Batch,
  limits: jax.Array,
  *,
  buffer_length: int,
  options: DecodingOptions,
) -> tuple[jax.Array, jax.Array]:
  """The whole translation of a batch, to be traced (by `generate`'s jit, or by `jax.export`).

  Args:
    model: a `Transformer` in eval mode, or the members of an ensemble (their caches are filled
      here).
    batch: the sources and each row's prefix, first token and seed (`Batch`).
    limits: `[batch]` int32 tokens each sentence may generate (EOS included).
    buffer_length: the output's length (at least every limit).
    options: beam size, length penalty, forced EOS, sampling (`max_new_tokens` and
      `extra_length` are already in `limits`).

  Returns:
    each sentence's hypotheses, best first, `[batch, beam_size, buffer_length]` int32 (`pad_id`
    after each end) and their length-normalised scores `[batch, beam_size]` (0 for greedy).
  """
  members = list(model) if isinstance(model, (list, tuple)) else [model]
  config = members[0].config
  beams = options.beam_size
  steps = ensemble_steps(
    [decoder_steps(m, batch.src_tokens, buffer_length, beams) for m in members]
  )
  rules = Rules(
    buffer_length=buffer_length,
    bos_id=config.bos_id,
    eos_id=config.eos_id,
    pad_id=config.pad_id,
    limits=limits,
    suppress=_suppressed(config),
    first=batch.forced_bos,
    prefix=batch.prefix,
    forced_eos=options.forced_eos,
  )
  if beams == 1:  # greedy search or sampling: scores 0
    pick = None
    if options.sampling is not None:
      seeds = jnp.arange(batch.size) if batch.row_seeds is None else batch.row_seeds
      pick = picker(options.sampling, seeds)
    caches = (steps.self_cache, steps.cross_cache)
    tokens = greedy_search(steps.call, caches, batch.size, rules, grow=steps.grow_pair, pick=pick)
    return tokens[:, None], jnp.zeros((batch.size, 1))
  return beam_search(
    steps.call,
    steps.self_cache,
    batch.size,
    rules,
    beam_size=beams,
    length_penalty=options.length_penalty,
    length_normalization=options.length_normalization,
    beam_invariant_cache=steps.cross_cache,
    grow=steps.grow,
  )


def bucket(length: int, limit: int) -> int:
  """`length` rounded up to a multiple of `LENGTH_BUCKET`, at most `limit`."""
  return min(-(-length // LENGTH_BUCKET) * LENGTH_BUCKET, limit)


def generate(
  model: Transformer | Ensemble,
  batch: Batch | jax.Array,
  options: DecodingOptions | None = None,
  **overrides,
) -> jax.Array:
  """Translates a batch: `[batch, src_length]` source ids (right-padded), or a `Batch` that also
  holds each row's target prefix, forced first token and seed -> target ids.

  Args:
    model: a `Transformer`, or an `Ensemble` of them.
    batch: the source ids, or a `Batch` (`Batch.of(src, prefix=..., forced_bos=...,
      row_seeds=...)`). A sentence with a prefix may generate at least its prefix and one more
      token.
    options: `DecodingOptions` (default: beam 4, length penalty 0.6); `overrides` replace its
      fields, e.g. `generate(model, src, beam_size=1, max_new_tokens=20)`. Without
      `max_new_tokens` each sentence may generate its own source length (non-padding tokens) +
      `extra_length`, capped at the model's `max_positions`; the output is then as long as the
      longest limit, rounded up to a multiple of 16.

  Returns:
    `[batch, length]` int32 tokens, `pad_id` after each sentence's end.
  """
  tokens, _ = _search(model, as_batch(batch), with_overrides(options, overrides))
  return tokens[:, 0]


def generate_n_best(
  model: Transformer | Ensemble,
  batch: Batch | jax.Array,
  options: DecodingOptions | None = None,
  *,
  n_best: int,
  **overrides,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The `n_best` best hypotheses of each sentence (arguments as `generate`'s; `n_best` at most
  the beam size, `DecodingOptions.check_n_best`): tokens `[batch, n_best, length]`, their
  length-normalised scores (what beam search ranks by) and their log-probabilities (EOS
  included), both `[batch, n_best]`.

  Greedy search's log-probability comes from one teacher-forced pass over its output."""
  options = with_overrides(options, overrides)
  options.check_n_best(n_best)
  batch = as_batch(batch)
  tokens, scores = _search(model, batch, options)
  tokens, scores = tokens[:, :n_best], scores[:, :n_best]
  lengths = (tokens != model.config.pad_id).sum(-1)
  penalty = lp(lengths, options.length_penalty, options.length_normalization)
  if options.beam_size == 1:
    log_probs = log_probability(model, batch.src_tokens, tokens[:, 0])[:, None]
    return tokens, log_probs / penalty, log_probs
  return tokens, scores, scores * penalty


def log_probability(
  model: Transformer | Ensemble, src_tokens: jax.Array, tokens: jax.Array
) -> jax.Array:
  """`[batch]` log P of `tokens` `[batch, length]` (up to the first pad) given the sources
  `[batch, src_length]`, from one teacher-forced pass (of each member of an ensemble)."""
  graphdefs, states = zip(*(nnx.split(m) for m in ensemble_lib.members_of(model)))
  return _log_probability(graphdefs, states, jnp.asarray(src_tokens), jnp.asarray(tokens))


@functools.partial(jax.jit, static_argnames=('graphdefs',))
def _log_probability(
  graphdefs: tuple[nnx.GraphDef, ...],
  states: tuple[nnx.State, ...],
  src_tokens: jax.Array,
  tokens: jax.Array,
) -> jax.Array:
  logits = []
  for graphdef, state in zip(graphdefs, states):
    model = nnx.merge(graphdef, state)
    model.eval()
    logits.append(model(src_tokens, shift_right(tokens, model.config.bos_id)))
  config = model.config
  log_probs = _log_probs(ensemble_lib.average_log_probs(logits), _suppressed(config), 'gnmt')
  picked = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  return jnp.where(tokens != config.pad_id, picked, 0.0).sum(-1)


def _search(
  model: Transformer | Ensemble, batch: Batch, options: DecodingOptions
) -> tuple[jax.Array, jax.Array]:
  """`search_model` jitted over a batch, with each sentence's limit set as `generate` says."""
  limits, buffer_length = _limits_and_length(model.config, batch, options)
  graphdefs, states = zip(*(nnx.split(m) for m in ensemble_lib.members_of(model)))
  return _generate(
    graphdefs,
    states,
    batch,
    limits,
    jnp.asarray(options.length_penalty, jnp.float32),
    settings=options.search_settings(),
    buffer_length=buffer_length,
  )


def _limits_and_length(config, batch: Batch, options: DecodingOptions) -> tuple[jax.Array, int]:
  """(`[batch]` int32 tokens each sentence may generate, the output's length) as `generate`
  says: a prefix of n tokens allows at least n + 1, a forced first token at least 2."""
  cap, src_tokens, prefix = config.max_positions, batch.src_tokens, batch.prefix
  if options.max_new_tokens is None:
    source_lengths = (src_tokens != config.pad_id).sum(-1)
    limits = jnp.minimum(source_lengths + options.extra_length, cap)
    buffer_length = bucket(src_tokens.shape[1] + options.extra_length, cap)
  else:
    limits = jnp.full((src_tokens.shape[0],), options.max_new_tokens)
    buffer_length = options.max_new_tokens
  if prefix is not None:
    if prefix.shape[1] + 1 > cap:
      raise ValueError(
        f'a target prefix of {prefix.shape[1]} tokens leaves no room to generate: the model '
        f'has {cap} positions'
      )
    limits = jnp.maximum(limits, (prefix != config.pad_id).sum(-1) + 1)
    needed = prefix.shape[1] + 1
    buffer_length = max(buffer_length, needed if options.max_new_tokens else bucket(needed, cap))
  if batch.forced_bos is not None:  # the forced token and at least one more
    limits = jnp.maximum(limits, 2)
  return limits.astype(jnp.int32), buffer_length


def generate_recompute(
  model: Transformer, src_tokens: jax.Array, *, max_new_tokens: int
) -> jax.Array:
  """Greedy decoding without a cache: re-runs the decoder over the whole prefix at every step.

  Slow on purpose (the reference the cached path is checked and benchmarked against).
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, src_tokens):
    m = nnx.merge(graphdef, state)
    m.eval()
    config = m.config
    encoded = m.encode(src_tokens)
    batch = src_tokens.shape[0]

    def body(i, carry):
      tokens, finished = carry
      logits = m.decode(shift_right(tokens, config.bos_id), encoded, src_tokens)[:, i]
      logits = jnp.where(_suppressed(config), -jnp.inf, logits)
      token = jnp.where(finished, config.pad_id, argmax_last(logits))
      return tokens.at[:, i].set(token), finished | (token == config.eos_id)

    tokens = jnp.full((batch, max_new_tokens), config.pad_id, jnp.int32)
    return jax.lax.fori_loop(0, max_new_tokens, body, (tokens, jnp.zeros((batch,), bool)))[0]

  return run(state, jnp.asarray(src_tokens))
