from flax import linen, nnx
import jax
import jax.numpy as jnp
import numpy as np

from transformer import Transformer, linen as transformer_linen, shift_right
from transformer.decoding import search

SRC = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])
TGT = jnp.array([[20, 21, 2, 0], [22, 2, 0, 0]])


def test_linen_wrapper_inside_a_linen_parent_matches_nnx(tiny_config):
  config = tiny_config.replace(dropout_rate=0.1)

  class Parent(linen.Module):
    @linen.compact
    def __call__(self, src, dec_in, deterministic=True):
      logits = transformer_linen.Transformer(config, name='transformer')(
        src, dec_in, deterministic=deterministic
      )
      return linen.Dense(3)(logits)

  dec_in = shift_right(TGT, config.bos_id)
  parent = Parent()
  variables = parent.init(jax.random.key(0), SRC, dec_in)
  assert parent.apply(variables, SRC, dec_in).shape == (2, 4, 3)

  linen_model = transformer_linen.Transformer(config)
  lin_vars = linen_model.init(jax.random.key(1), SRC, dec_in)
  nnx_model = Transformer(config, rngs=nnx.Rngs(7))
  nnx_model.eval()
  nnx.update(nnx_model, linen.meta.unbox(lin_vars['params']['transformer']))
  np.testing.assert_allclose(
    linen_model.apply(lin_vars, SRC, dec_in), nnx_model(SRC, dec_in), atol=1e-6
  )
  np.testing.assert_allclose(
    linen_model.apply(lin_vars, SRC, method='encode'), nnx_model.encode(SRC), atol=1e-6
  )
  # Dropout is active only when asked for, and then uses Linen's 'dropout' key.
  train = linen_model.apply(
    lin_vars, SRC, dec_in, deterministic=False, rngs={'dropout': jax.random.key(2)}
  )
  assert not np.allclose(train, nnx_model(SRC, dec_in))
  # The parameters reach Linen boxed with their logical axis names.
  boxed = lin_vars['params']['transformer']['embed']['table']['embedding']
  assert boxed.metadata['out_sharding'] == ('vocab', 'embed')


def test_linen_users_can_translate_with_the_same_tokens_as_nnx(tiny_config):
  linen_model = transformer_linen.Transformer(tiny_config)
  variables = linen_model.init(jax.random.key(1), SRC, shift_right(TGT, tiny_config.bos_id))
  nnx_model = Transformer(tiny_config, rngs=nnx.Rngs(7))
  nnx.update(nnx_model, linen.meta.unbox(variables['params']['transformer']))
  for beam_size in (1, 2):
    tokens = linen_model.apply(
      variables, SRC, beam_size=beam_size, max_new_tokens=6, method='generate'
    )
    expected = search.generate(nnx_model, SRC, beam_size=beam_size, max_new_tokens=6)
    np.testing.assert_array_equal(tokens, expected)
