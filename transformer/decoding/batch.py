"""A batch of sentences to decode: the sources and what each row brings besides them, built once
and passed whole (a pytree, so it enters jit as one argument)."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Batch:
  """What `search.generate` decodes.

  Attributes:
    src_tokens: `[batch, src_length]` int32 source ids, right-padded with `pad_id`.
    row_seeds: `[batch]` int32 each row's seed number when sampling (its sentence and sample,
      so that a sample does not depend on its batch), or None: the row index.
    prefix: `[batch, width]` int32 target ids every hypothesis of a row starts with,
      right-padded with `pad_id` (a row of pads forces nothing), or None.
    forced_bos: `[batch]` int32 each row's first token, scored 0 (transformers'
      `forced_bos_token_id`: a many-to-many model's target language), or None.
  """

  src_tokens: jax.Array
  row_seeds: jax.Array | None = None
  prefix: jax.Array | None = None
  forced_bos: jax.Array | None = None

  @classmethod
  def of(
    cls,
    src_tokens: Any,
    *,
    row_seeds: Any = None,
    prefix: Any = None,
    forced_bos: Any = None,
  ) -> Batch:
    """A batch of int32 arrays from array-likes."""
    as_int32 = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
    return cls(as_int32(src_tokens), as_int32(row_seeds), as_int32(prefix), as_int32(forced_bos))

  @property
  def size(self) -> int:
    return self.src_tokens.shape[0]


def as_batch(batch: Batch | Any) -> Batch:
  """`batch` itself, or a `Batch` of source ids alone."""
  return batch if isinstance(batch, Batch) else Batch.of(batch)
