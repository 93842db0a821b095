"""bfloat16 compute (parameters and optimizer state stay float32) trains like float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcap import train_lib, train_state


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
