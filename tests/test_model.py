import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer import (
  DecoderBlock,
  Embed,
  EncoderBlock,
  PositionalEncoding,
  Transformer,
  TransformerConfig,
  count_params,
  shift_right,
)
from transformer.model import masks

SRC = jnp.array([[5, 6, 7, 8, 9, 0], [10, 11, 12, 0, 0, 0], [13, 14, 15, 16, 17, 18]])
TGT = jnp.array([[20, 21, 22, 2, 0, 0, 0], [23, 24, 2, 0, 0, 0, 0], [25, 26, 27, 28, 29, 30, 2]])


def make_model(config, seed=0):
  model = Transformer(config, rngs=nnx.Rngs(seed))
  model.eval()
  return model


def test_causality_future_targets_do_not_change_earlier_outputs(tiny_config):
  model = make_model(tiny_config)
  dec_in = shift_right(TGT, tiny_config.bos_id)
  logits = model(SRC, dec_in)
  for t in range(dec_in.shape[1] - 1):
    changed = dec_in.at[:, t + 1 :].set(7)
    np.testing.assert_allclose(model(SRC, changed)[:, : t + 1], logits[:, : t + 1], atol=1e-6)
    # And the change is seen at later positions (the check above could not pass vacuously).
  assert not np.allclose(model(SRC, dec_in.at[:, 3:].set(7))[:, 3:], logits[:, 3:])


def test_padded_source_tokens_change_nothing(tiny_config):
  model = make_model(tiny_config)
  dec_in = shift_right(TGT, tiny_config.bos_id)
  logits = model(SRC, dec_in)
  # Same lengths, different content in the padded slots is impossible (they are pad_id), so
  # instead: extra padding columns and a different pad layout must give the same logits.
  wider = jnp.pad(SRC, ((0, 0), (0, 4)), constant_values=tiny_config.pad_id)
  np.testing.assert_allclose(model(wider, dec_in), logits, atol=1e-5)
  # Encoder outputs at real positions are unaffected by the padding too.
  valid = np.asarray(SRC != tiny_config.pad_id)
  enc, enc_wide = model.encode(SRC), model.encode(wider)
  np.testing.assert_allclose(np.asarray(enc_wide[:, :6])[valid], np.asarray(enc)[valid], atol=1e-5)


def test_padding_bias_hides_masked_keys_whatever_they_hold(tiny_config):
  """Masked (padded) source positions may hold any embedding: the outputs must not move."""
  model = make_model(tiny_config)
  dec_in = shift_right(TGT, tiny_config.bos_id)
  valid = SRC != tiny_config.pad_id
  enc = model.encode(SRC)
  garbage = jnp.where(valid[..., None], enc, 1e3)
  np.testing.assert_allclose(
    model.decode(dec_in, garbage, SRC), model.decode(dec_in, enc, SRC), atol=1e-5
  )


def test_packed_examples_do_not_see_each_other(tiny_config):
  model = make_model(tiny_config)
  a_src, a_tgt = jnp.array([5, 6, 7]), jnp.array([20, 21, 2])
  b_src, b_tgt = jnp.array([8, 9, 10, 11]), jnp.array([22, 23, 24, 25, 2])
  pad = lambda x, n: jnp.pad(x, (0, n - len(x)))
  alone = []
  for s, t in ((a_src, a_tgt), (b_src, b_tgt)):
    alone.append(model(s[None], shift_right(t[None], tiny_config.bos_id))[0])
  src = pad(jnp.concatenate([a_src, b_src]), 9)[None]
  src_seg = pad(jnp.array([1] * 3 + [2] * 4), 9)[None]
  src_pos = pad(jnp.concatenate([jnp.arange(3), jnp.arange(4)]), 9)[None]
  dec_in = pad(
    jnp.concatenate([shift_right(a_tgt[None], 1)[0], shift_right(b_tgt[None], 1)[0]]), 10
  )[None]
  tgt_seg = pad(jnp.array([1] * 3 + [2] * 5), 10)[None]
  tgt_pos = pad(jnp.concatenate([jnp.arange(3), jnp.arange(5)]), 10)[None]
  packed = model(
    src,
    dec_in,
    src_segments=src_seg,
    tgt_segments=tgt_seg,
    src_positions=src_pos,
    tgt_positions=tgt_pos,
  )[0]
  np.testing.assert_allclose(packed[:3], alone[0], atol=1e-5)
  np.testing.assert_allclose(packed[3:8], alone[1], atol=1e-5)


@pytest.mark.parametrize('norm_position', ['post', 'pre'])
def test_teacher_forcing_equals_token_by_token_decoding(tiny_config, norm_position):
  config = tiny_config.replace(norm_position=norm_position)
  model = make_model(config)
  dec_in = shift_right(TGT, config.bos_id)
  parallel = model(SRC, dec_in)
  encoded = model.encode(SRC)
  model.init_cache(encoded, max_decode_length=dec_in.shape[1])
  steps = []
  for t in range(dec_in.shape[1]):
    positions = jnp.full((SRC.shape[0], 1), t)
    steps.append(
      model.decode(dec_in[:, t : t + 1], encoded, SRC, tgt_positions=positions, use_cache=True)
    )
  sequential = np.concatenate(steps, axis=1)
  # Compare at every real target position (decoder input is not padding).
  valid = np.asarray(dec_in != config.pad_id)
  np.testing.assert_allclose(sequential[valid], np.asarray(parallel)[valid], atol=1e-5)


def test_reference_and_xla_attention_give_the_same_model(tiny_config):
  ref = make_model(tiny_config)
  xla = make_model(tiny_config.replace(attention_implementation='xla'))
  dec_in = shift_right(TGT, tiny_config.bos_id)
  np.testing.assert_allclose(xla(SRC, dec_in), ref(SRC, dec_in), atol=1e-4)


def test_bfloat16_compute_keeps_float32_params_and_is_close(tiny_config):
  f32 = make_model(tiny_config)
  bf16 = make_model(tiny_config.replace(dtype='bfloat16'))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  dec_in = shift_right(TGT, tiny_config.bos_id)
  out, reference = np.asarray(bf16(SRC, dec_in)), np.asarray(f32(SRC, dec_in))
  assert out.dtype == np.float32
  error = np.abs(out - reference)
  # bfloat16 keeps 8 significant bits (relative rounding 2^-9): a few roundings per layer leave
  # the logits within 2% of their scale, and they do differ (the bf16 path really ran).
  assert error.max() <= 0.02 * np.abs(reference).max()
  assert error.mean() > 1e-5


def _expected_params(vocab, d, d_ff, n_enc, n_dec):
  attention = 4 * d * d + 3 * d  # W^Q, W^K, W^V, W^O; biases on Q, V and the output
  ffn = d * d_ff + d_ff + d_ff * d + d  # W_1, b_1, W_2, b_2
  norm = 2 * d  # LayerNorm scale and bias
  encoder_layer = attention + ffn + 2 * norm
  decoder_layer = 2 * attention + ffn + 3 * norm
  return vocab * d + n_enc * encoder_layer + n_dec * decoder_layer


def test_parameter_counts_match_the_paper():
  base = nnx.eval_shape(lambda: Transformer(TransformerConfig.base(), rngs=nnx.Rngs(0)))
  big = nnx.eval_shape(lambda: Transformer(TransformerConfig.big(), rngs=nnx.Rngs(0)))
  assert count_params(base) == _expected_params(37000, 512, 2048, 6, 6) == 63_073_280
  assert count_params(big) == _expected_params(37000, 1024, 4096, 6, 6) == 214_226_944
  # Table 3 of the paper: 65M and 213M.
  assert abs(count_params(base) / 65e6 - 1) < 0.05
  assert abs(count_params(big) / 213e6 - 1) < 0.05


def test_decoder_only_language_model_trains_one_step(tiny_config):
  config = tiny_config

  class LanguageModel(nnx.Module):
    def __init__(self, rngs):
      self.embed = Embed(config.vocab_size, config.d_model, rngs=rngs)
      self.positions = PositionalEncoding(config.max_positions, config.d_model, rngs=rngs)
      self.blocks = nnx.List(
        [DecoderBlock(config, cross_attention=False, rngs=rngs) for _ in range(2)]
      )

    def __call__(self, tokens):
      bias = masks.mask_to_bias(masks.causal_mask(tokens.shape[1]))
      x = self.positions(self.embed(tokens))
      for block in self.blocks:
        x = block(x, self_bias=bias)
      return self.embed.attend(x)

  lm = LanguageModel(nnx.Rngs(0))
  optimizer = nnx.Optimizer(lm, optax.adam(1e-2), wrt=nnx.Param)
  tokens = jax.random.randint(jax.random.key(0), (4, 12), 3, config.vocab_size)

  def loss_fn(model):
    logits = model(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  forward = nnx.jit(lambda model, tokens: model(tokens))
  # Causal: a token never sees the ones after it (changing them changes only later logits).
  logits = forward(lm, tokens)
  changed = forward(lm, tokens.at[:, 6:].set(3))
  np.testing.assert_allclose(changed[:, :6], logits[:, :6], atol=1e-6)
  assert not np.allclose(changed[:, 6:], logits[:, 6:])
  assert all(block.cross_attention is None for block in lm.blocks)
  # And it learns: a few steps on one batch bring the loss well down.
  before = nnx.jit(loss_fn)(lm)
  for _ in range(5):
    loss = train_step(lm, optimizer)
  assert np.isfinite(loss) and nnx.jit(loss_fn)(lm) < 0.8 * before


@pytest.mark.parametrize(
  'field,value,match',
  [
    ('d_model', 30, 'divisible by num_heads'),
    ('num_heads', 0, 'positive integer'),
    ('d_ff', -1, 'positive integer'),
    ('vocab_size', 0, 'positive integer'),
    ('num_encoder_layers', 0, 'positive integer'),
    ('max_positions', 0, 'positive integer'),
    ('dropout_rate', 1.5, r'dropout_rate must be in \[0, 1\)'),
    ('norm_position', 'middle', 'norm_position'),
    ('attention_implementation', 'magic', 'attention_implementation'),
    ('dtype', 'int8', 'dtype'),
    ('eos_id', 0, 'must differ'),
    ('attention_implementation', 'cudnn', "cudnn' needs dtype='bfloat16'"),
  ],
)
def test_invalid_configs_raise_clear_errors(field, value, match):
  with pytest.raises(ValueError, match=match):
    TransformerConfig(**{field: value})


def test_decode_length_beyond_positional_table_is_rejected(tiny_config):
  model = make_model(tiny_config)
  with pytest.raises(ValueError, match='max_positions'):
    model.init_cache(model.encode(SRC), max_decode_length=tiny_config.max_positions + 1)


def test_import_does_not_pull_in_tensorflow():
  code = (
    'import sys, transformer, transformer.linen, transformer.model.encoder_decoder, '
    'transformer.model.attention, transformer.decoding.search, transformer.training.steps, '
    'transformer.training.checkpoints, transformer.training.loop, '
    'transformer.training.evaluation, transformer.decoding.translation; '
    'assert "tensorflow" not in sys.modules, "tensorflow imported"; '
    'assert "grain" not in sys.modules, "grain (data extra) imported"'
  )
  subprocess.run([sys.executable, '-c', code], check=True)


def test_sinusoid_table_is_the_papers_formula():
  from transformer import sinusoidal_table

  table = sinusoidal_table(50, 16)
  for pos in (0, 1, 7, 49):
    for i in range(8):
      angle = pos / 10000 ** (2 * i / 16)
      assert table[pos, 2 * i] == pytest.approx(np.sin(angle), abs=1e-6)
      assert table[pos, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-6)


def test_embedding_is_scaled_by_sqrt_d_model_and_tied_to_the_output():
  embed = Embed(30, 16, rngs=nnx.Rngs(0))
  table = np.asarray(embed.table.embedding[...])
  tokens = jnp.array([[3, 7, 29]])
  np.testing.assert_allclose(embed(tokens)[0], table[[3, 7, 29]] * 4.0, rtol=1e-6)  # √16 = 4
  x = jax.random.normal(jax.random.key(0), (1, 2, 16))
  np.testing.assert_allclose(embed.attend(x), np.asarray(x) @ table.T, rtol=1e-5, atol=1e-5)


def test_feed_forward_is_relu_between_two_linear_maps():
  from transformer import FeedForward

  ffn = FeedForward(8, 32, rngs=nnx.Rngs(0))
  for layer in (ffn.w_1, ffn.w_2):  # non-zero biases, so that they are checked too
    layer.bias[...] = jax.random.normal(jax.random.key(1), layer.bias.shape)
  x = np.asarray(jax.random.normal(jax.random.key(2), (2, 3, 8)), np.float64)
  w1, b1 = np.asarray(ffn.w_1.kernel[...], np.float64), np.asarray(ffn.w_1.bias[...], np.float64)
  w2, b2 = np.asarray(ffn.w_2.kernel[...], np.float64), np.asarray(ffn.w_2.bias[...], np.float64)
  hidden = x @ w1 + b1
  assert (hidden < 0).mean() > 0.2  # the ReLU really cuts something here
  np.testing.assert_allclose(
    ffn(jnp.asarray(x, jnp.float32)), np.maximum(hidden, 0) @ w2 + b2, atol=1e-5
  )


def _layer_norm(x, scale, bias, eps=1e-6):
  x = np.asarray(x, np.float64)
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(bias)


@pytest.mark.parametrize('norm_position', ['post', 'pre'])
def test_encoder_block_applies_add_and_norm_in_the_papers_order(tiny_config, norm_position):
  """post-LN: x₁ = LN(x + SelfAttention(x)), y = LN(x₁ + FFN(x₁)) (paper);
  pre-LN: x₁ = x + SelfAttention(LN(x)), y = x₁ + FFN(LN(x₁))."""
  block = EncoderBlock(tiny_config.replace(norm_position=norm_position), rngs=nnx.Rngs(0))
  block.eval()
  for norm in (block.self_attention_norm.norm, block.feed_forward_norm.norm):
    norm.scale[...] = jax.random.uniform(jax.random.key(3), norm.scale.shape, minval=0.5, maxval=2)
    norm.bias[...] = jax.random.normal(jax.random.key(4), norm.bias.shape)
  x = jax.random.normal(jax.random.key(5), (2, 5, tiny_config.d_model))
  ln = lambda norm, v: jnp.asarray(_layer_norm(v, norm.scale[...], norm.bias[...]), jnp.float32)
  attention_norm, ffn_norm = block.self_attention_norm.norm, block.feed_forward_norm.norm
  if norm_position == 'post':
    x1 = ln(attention_norm, x + block.self_attention(x))
    expected = ln(ffn_norm, x1 + block.feed_forward(x1))
  else:
    x1 = x + block.self_attention(ln(attention_norm, x))
    expected = x1 + block.feed_forward(ln(ffn_norm, x1))
  np.testing.assert_allclose(block(x, None), expected, atol=2e-5)


def test_the_causal_mask_can_be_removed_to_show_what_it_prevents(tiny_config):
  model = make_model(tiny_config.replace(decoder_causal_mask=False))
  dec_in = shift_right(TGT, tiny_config.bos_id)
  logits = model(SRC, dec_in)
  # Without the mask an earlier position sees a later token.
  assert not np.allclose(model(SRC, dec_in.at[:, 3:].set(7))[:, :3], logits[:, :3])
