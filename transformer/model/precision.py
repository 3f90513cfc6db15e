"""Mixed precision: how bfloat16 projections accumulate.

A bfloat16 projection multiplies bfloat16 operands, sums the products in float32 and rounds the
result to bfloat16 once; GPUs and TPUs do exactly that inside their bfloat16 dots. XLA:CPU does
too, but it runs such a dot on its fast AVX512-BF16/AMX kernels only when the dot's *result* is
float32 (with a bfloat16 result it runs at about the float32 rate). On CPU the projections
therefore ask for the float32 result and round it themselves, in the forward pass and in both
gradient matmuls: the same numbers, at the bf16 rate.

On every backend, a contraction with a float32 result (the output logits, and the attention
logits Q·Kᵀ, whose softmax runs in float32) takes the same path: autodiff
of a float32-result dot would feed the float32 cotangent into both gradient matmuls, which then
run as float32 × bfloat16 (TF32 at best on a GPU, about half the bf16 rate). Other projections
on accelerators are plain bf16 dots (their cotangents are bf16 already). Measurements:
docs/performance.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _bf16_projection(equation: str, result_dtype, x: jax.Array, kernel: jax.Array) -> jax.Array:
  """bfloat16 einsum `equation` with float32 sums, returned in `result_dtype`; `x` and `kernel`
  may be float32 (cast here), and their gradients come back in their own dtypes."""
  return jnp.einsum(
    equation,
    x.astype(jnp.bfloat16),
    kernel.astype(jnp.bfloat16),
    preferred_element_type=jnp.float32,
  ).astype(result_dtype)


def _bf16_projection_fwd(equation, result_dtype, x, kernel):
  return _bf16_projection(equation, result_dtype, x, kernel), (x, kernel)


def _bf16_projection_bwd(equation, result_dtype, residuals, g):
  # Written out rather than left to autodiff: autodiff feeds the float32 cotangent of the float32
  # result into both gradient matmuls, which then run as float32 × float32 (half the speed).
  # The gradient of an einsum with respect to one operand is the same einsum of the cotangent
  # with the other operand, the roles swapped (batch indices stay), here with bf16 operands and
  # float32 sums. A float32 result's cotangent is rounded to bf16 like any other bf16 operand.
  x, kernel = residuals
  inputs, result = equation.split('->')
  x_indices, kernel_indices = inputs.split(',')
  g, x16, kernel16 = g.astype(jnp.bfloat16), x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  dx = jnp.einsum(
    f'{result},{kernel_indices}->{x_indices}', g, kernel16, preferred_element_type=jnp.float32
  )
  dkernel = jnp.einsum(
    f'{x_indices},{result}->{kernel_indices}', x16, g, preferred_element_type=jnp.float32
  )
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_bf16_projection.defvjp(_bf16_projection_fwd, _bf16_projection_bwd)


def project(
  equation: str, x: jax.Array, kernel: jax.Array, dtype, *, float32_result: bool = False
) -> jax.Array:
  """A contraction `jnp.einsum(equation, x, kernel)` with both operands in the compute `dtype`.

  The result is in `dtype`, or float32 with `float32_result` (logits: the sums are not rounded to
  bfloat16). No index may be summed within one operand: every index (and `...`) appears in two
  of x, kernel and the result, or in all three (a batch index), e.g. 'bld,dhk->blhk' or
  'bqhd,bkhd->bhqk'.
  In bfloat16 on CPU, and for a float32 result everywhere, the forward and both gradient matmuls
  take bf16 operands and sum in float32 (module docstring).
  """
  result_dtype = jnp.float32 if float32_result else jnp.dtype(dtype)
  if jnp.dtype(dtype) == jnp.bfloat16 and _bf16_gradients_pay(equation, float32_result):
    return _bf16_projection(equation, result_dtype, x, kernel)
  return jnp.einsum(
    equation, x.astype(dtype), kernel.astype(dtype), preferred_element_type=result_dtype
  )


def _bf16_gradients_pay(equation: str, float32_result: bool) -> bool:
  """Whether the written-out bf16 gradients are both possible and faster than autodiff's.

  On accelerators: for a float32 result (autodiff would multiply float32 cotangents). On CPU: for
  every projection (XLA:CPU's fast bf16 kernels need a float32 result), but not for a batched
  contraction such as Q·Kᵀ: XLA:CPU's batched dot has no bf16 × bf16 -> f32 kernel.
  """
  if jax.default_backend() != 'cpu':
    return float32_result
  inputs, result = equation.split('->')
  x_indices, kernel_indices = inputs.split(',')
  batched = any(i in kernel_indices and i in result for i in x_indices.replace('...', ''))
  return not batched
