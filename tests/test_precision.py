import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer.model import precision

# The projections the model uses: attention Q/K/V and output, feed-forward, logits.
EQUATIONS = {
  'bld,d...->bl...': ((2, 5, 16), (16, 3, 2, 8)),
  'bqhd,hdm->bqm': ((2, 5, 4, 8), (4, 8, 16)),
  'bli,io->blo': ((2, 5, 16), (16, 24)),
  'bld,vd->blv': ((2, 5, 16), (40, 16)),
}


def _bf16_values(shape, seed):
  """Random values exactly representable in bfloat16, as float64."""
  x = np.random.default_rng(seed).normal(size=shape)
  return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)


def _within_bf16_rounding(actual, exact, scale):
  # One rounding to bfloat16 (8 significant bits) of a float32 sum: relative error <= 2^-8 of the
  # result, plus float32 summation error (negligible here).
  np.testing.assert_allclose(np.asarray(actual, np.float64), exact, rtol=2**-8, atol=1e-6 * scale)


@pytest.mark.parametrize('equation', sorted(EQUATIONS))
def test_bfloat16_projection_and_its_gradients_sum_in_float32(equation):
  x_shape, kernel_shape = EQUATIONS[equation]
  x, kernel = _bf16_values(x_shape, 0), _bf16_values(kernel_shape, 1)
  float32_result = equation.endswith('blv')
  out = precision.project(
    equation,
    jnp.asarray(x, jnp.bfloat16),
    jnp.asarray(kernel, jnp.float32),
    jnp.bfloat16,
    float32_result=float32_result,
  )
  assert out.dtype == (jnp.float32 if float32_result else jnp.bfloat16)
  explicit = equation.replace('...', 'tuv')  # numpy's einsum wants the ellipsis spelled out here
  exact = np.einsum(explicit, x, kernel)
  _within_bf16_rounding(out, exact, np.abs(exact).max())

  cotangent = _bf16_values(exact.shape, 2)

  def loss(x, kernel):
    y = precision.project(equation, x, kernel, jnp.bfloat16, float32_result=float32_result)
    return jnp.sum(y.astype(jnp.float32) * cotangent.astype(np.float32))

  dx, dkernel = jax.grad(loss, argnums=(0, 1))(
    jnp.asarray(x, jnp.bfloat16), jnp.asarray(kernel, jnp.float32)
  )
  assert dx.dtype == jnp.bfloat16 and dkernel.dtype == jnp.float32  # each in its input's dtype
  inputs, result = explicit.split('->')
  x_indices, kernel_indices = inputs.split(',')
  exact_dx = np.einsum(f'{result},{kernel_indices}->{x_indices}', cotangent, kernel)
  exact_dkernel = np.einsum(f'{x_indices},{result}->{kernel_indices}', x, cotangent)
  _within_bf16_rounding(dx, exact_dx, np.abs(exact_dx).max())
  # The weight gradient is returned in float32 without a bfloat16 rounding in between.
  np.testing.assert_allclose(np.asarray(dkernel, np.float64), exact_dkernel, rtol=1e-5, atol=1e-5)


def test_float32_projection_is_a_plain_einsum():
  x, kernel = _bf16_values((2, 5, 16), 0), _bf16_values((16, 24), 1)
  out = precision.project('bli,io->blo', jnp.asarray(x), jnp.asarray(kernel), jnp.float32)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, np.einsum('bli,io->blo', x, kernel), rtol=1e-5, atol=1e-5)


def _dot_operand_dtypes(jaxpr) -> list[tuple[str, ...]]:
  """(operand dtypes..., 'batched' or 'plain') of every dot_general in a jaxpr, sub-jaxprs
  (custom VJPs, scans) included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (_, _), (batch_dims, _) = eqn.params['dimension_numbers']
      kind = 'batched' if batch_dims else 'plain'
      found.append(tuple(str(v.aval.dtype) for v in eqn.invars) + (kind,))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          found += _dot_operand_dtypes(inner)
  return found


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_every_matmul_of_a_bfloat16_train_step_takes_bfloat16_operands(
  tiny_config, backend, monkeypatch
):
  """Forward and backward, logits included: a float32 operand would run at the float32 (TF32)
  rate on a GPU. The backend is what `precision.project` decides by, so it is set here. On CPU
  the gradients of the attention scores (batched dots) stay float32: XLA:CPU has no batched
  bf16 × bf16 -> f32 kernel (the step is also run there, so that this cannot break)."""
  from flax import nnx

  from transformer import Transformer, shift_right
  from transformer.training import steps as training

  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  model = Transformer(tiny_config.replace(dtype='bfloat16'), rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  src = jnp.array([[5, 6, 7, 2, 0]])
  tgt = jnp.array([[8, 9, 2, 0, 0]])

  def loss(params):
    logits = nnx.merge(graphdef, params, rest)(src, shift_right(tgt, 1))
    return training.label_smoothed_cross_entropy(logits, tgt, (tgt > 0).astype(jnp.float32), 0.1)[0]

  dots = _dot_operand_dtypes(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  assert len(dots) > 20  # forward and both gradients of every projection and attention contraction
  plain = [d for d in dots if d[2] == 'plain']
  assert len(plain) > 20 and all(d[:2] == ('bfloat16', 'bfloat16') for d in plain), plain
  batched = [d for d in dots if d[2] == 'batched']
  if backend == 'gpu':
    assert all(d[:2] == ('bfloat16', 'bfloat16') for d in batched), batched
  else:
    assert np.isfinite(
      float(jax.jit(jax.grad(loss))(params)['embed']['table']['embedding'][...].sum())
    )
