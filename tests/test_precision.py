"""bfloat16 compute (parameters and optimizer state stay float32) trains like float32; its logits are float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import linen as nn

from jaxcap import train_lib, train_state
from jaxcap.models.decoder import Decoder


@pytest.mark.slow
def test_bf16_loss_tracks_f32_over_300_quickstart_steps(tiny_config, read_metrics, tmp_path):
  # The quickstart model's widths on the tiny data; end to end (encoder trained too).
  common = {"model.embed_dim": 64, "model.hidden_dim": 128, "model.attention_dim": 64, "train.num_steps": 300,
            "train.eval_every": 0, "train.checkpoint_every": 0, "train.final_test_eval": False,
            "train.learning_rate": 3e-3, "train.encoder_learning_rate": 3e-3}
  curves = {}
  for dtype in ("float32", "bfloat16"):
    cfg = tiny_config("finetune", **{**common, "model.dtype": dtype})
    workdir = str(tmp_path / dtype)
    train_lib.train_and_evaluate(cfg, workdir)
    losses = read_metrics(workdir)
    curves[dtype] = np.array([losses[s] for s in range(1, 301)])
  f32, bf16 = (c.reshape(6, 50).mean(1) for c in (curves["float32"], curves["bfloat16"]))
  # Every 50-step window's mean loss within 5% of float32's, and both learned (last window well under first).
  np.testing.assert_allclose(bf16, f32, rtol=0.05)
  assert f32[-1] < 0.6 * f32[0] and bf16[-1] < 0.6 * bf16[0]


def test_bf16_state_keeps_float32_parameters_and_optimizer_state(tiny_config):
  cfg = tiny_config("finetune", **{"model.dtype": "bfloat16"})
  model, variables = train_state.init_model(cfg, 20)
  setup = train_state.build(cfg, model, variables, 10, ("encoder", "decoder"))
  leaves = jax.tree.leaves((setup.state["params"], setup.state["opt_state"]))
  floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert model.decoder.dtype == jnp.bfloat16 and model.encoder.dtype == jnp.bfloat16


def test_bf16_decoder_logits_are_float32_not_rounded_to_bfloat16():
  vocab, width = 128, 128
  d = Decoder(vocab_size=vocab, embed_dim=width, hidden_dim=width, attention_dim=8, mode="show_tell", dropout=0.0,
              dtype=jnp.bfloat16)
  grid = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2, 2, 6)), jnp.float32)
  tokens = jnp.asarray(np.random.default_rng(1).integers(3, vocab, (4, 5)), jnp.int32)
  v = jax.jit(d.init)(jax.random.key(0), grid, tokens)
  v["params"]["out"]["bias"] = jnp.asarray(np.random.default_rng(3).normal(size=vocab) * 3, jnp.float32)
  logits, _ = jax.jit(d.apply)(v, grid, tokens)
  assert logits.dtype == jnp.float32 and v["params"]["out"]["kernel"].dtype == jnp.float32
  # The vocabulary projection alone: bfloat16 inputs and kernel, accumulated and returned in float32, against
  # the exact product of the same bfloat16 values.
  x = jnp.asarray(np.random.default_rng(2).normal(size=(64, width)), jnp.float32)
  got = np.asarray(jax.jit(lambda v, x: d.apply(v, x, method=lambda m, x: m._logits(x)))(v, x), np.float64)
  bf = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)  # noqa: E731
  out = v["params"]["out"]
  exact = bf(x) @ bf(out["kernel"]) + np.asarray(out["bias"], np.float64)
  scale = np.abs(bf(x)) @ np.abs(bf(out["kernel"]))   # what the rounding errors of a dot product scale with
  err = np.max(np.abs(got - exact) / scale)
  rounded = np.max(np.abs(bf(exact) - exact) / scale)  # the same logits rounded to bfloat16, as they were
  assert err < 1e-5 and rounded > 2.0 ** -12, (err, rounded)


def test_float32_vocabulary_projection_is_an_nn_dense_bit_for_bit_with_the_same_parameters():
  # Checkpoints written with an nn.Dense "out" layer load unchanged (the same names and shapes) and, in float32,
  # give the same logits.
  d = Decoder(vocab_size=40, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 16 + 6)), jnp.float32)  # [h; context]
  dense = nn.Dense(40, bias_init=nn.initializers.normal(1.0))
  out = dense.init(jax.random.key(0), x)["params"]
  logits = jax.jit(lambda p, x: d.apply({"params": p}, x, method=lambda m, x: m._logits(x)))({"out": out}, x)
  assert np.asarray(logits).tobytes() == np.asarray(jax.jit(dense.apply)({"params": out}, x)).tobytes()
  grid = jax.ShapeDtypeStruct((2, 2, 2, 6), jnp.float32)
  shapes = jax.eval_shape(d.init, jax.random.key(0), grid, jnp.zeros((2, 3), jnp.int32))["params"]["out"]
  assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, out)
