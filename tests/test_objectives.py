"""The cross-entropy objective: without label smoothing it scores the targets' logits directly (integer labels),
with the one-hot formulation's loss and gradients and without building a [B, T, V] one-hot; smoothing keeps it."""
import re

import jax
import numpy as np
import optax
import pytest

from jaxcap import objectives
from jaxcap.models.caption_model import make_model

B, T, V = 4, 11, 13  # distinct sizes, so a [B, T, V] array is recognisable in the program text


def _setup(tiny_config, smoothing):
  config = tiny_config("cached", **{"train.label_smoothing": smoothing, "train.attention_penalty": 0.5})
  model = make_model(config.model, V)
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, V, (B, T + 1)).astype(np.int32)
  tokens[:, 0] = 1
  mask = (np.arange(T + 1)[None] < np.array([[T + 1], [9], [7], [5]])).astype(np.float32)
  batch = {"grid": rng.normal(size=(B, 2, 2, 128)).astype(np.float32), "tokens": tokens, "mask": mask}
  decoder = jax.jit(model.decoder.init)(jax.random.key(0), batch["grid"], tokens[:, :-1])["params"]
  return config, model, {"decoder": decoder}, batch


def _one_hot_loss(config, model, params, batch, rng):
  """The objective written with dense one-hot labels: what the integer labels must equal."""
  inputs, targets, mask = batch["tokens"][:, :-1], batch["tokens"][:, 1:], batch["mask"][:, 1:]
  dropout = jax.random.fold_in(rng, objectives.DROPOUT)
  logits, alphas, _ = objectives.decoder_forward(model, params, {}, batch, inputs, dropout)
  labels = jax.nn.one_hot(targets, V)
  if config.train.label_smoothing:
    labels = optax.smooth_labels(labels, config.train.label_smoothing)
  ce = (optax.softmax_cross_entropy(logits, labels) * mask).sum() / mask.sum()
  attended = (alphas * mask[:, :, None]).sum(1)
  return ce + config.train.attention_penalty * ((1.0 - attended) ** 2).mean()


def _loss_and_grads(loss, params):
  """(loss, decoder gradients, boolean [B, T, V] arrays in the program before and after XLA: a one-hot is a
  compare of the labels with an iota of the vocabulary)."""
  lowered = jax.jit(jax.value_and_grad(loss)).lower(params)
  compiled = lowered.compile()
  masks = (len(re.findall(rf"tensor<{B}x{T}x{V}xi1>", lowered.as_text())) +
           len(re.findall(rf"pred\[{B},{T},{V}\]", compiled.as_text())))
  return *compiled(params), masks


@pytest.mark.slow  # two gradient compilations
def test_cross_entropy_with_integer_labels_equals_one_hot_and_builds_no_one_hot(tiny_config):
  config, model, params, batch = _setup(tiny_config, 0.0)
  rng = jax.random.key(3)
  objective = objectives.cross_entropy(config, objectives.decoder_forward)
  loss, grads, masks = _loss_and_grads(lambda p: objective(model, p, {}, batch, rng)[0], params)
  ref_loss, ref_grads, ref_masks = _loss_and_grads(lambda p: _one_hot_loss(config, model, p, batch, rng), params)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-6)
  assert ref_masks > 0  # what the check finds in the one-hot program
  assert masks == 0


def test_label_smoothing_keeps_the_smoothed_one_hot_loss(tiny_config):
  config, model, params, batch = _setup(tiny_config, 0.1)
  rng = jax.random.key(3)
  objective = objectives.cross_entropy(config, objectives.decoder_forward)
  plain = objectives.cross_entropy(_setup(tiny_config, 0.0)[0], objectives.decoder_forward)
  loss, ref, no_smoothing = jax.jit(lambda p: (objective(model, p, {}, batch, rng)[0],
                                               _one_hot_loss(config, model, p, batch, rng),
                                               plain(model, p, {}, batch, rng)[0]))(params)
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  assert abs(float(loss) - float(no_smoothing)) > 1e-3


def test_random_streams_are_one_per_purpose():
  """Seed 1's initialisation is not seed 0's train stream (it was: PRNGKey(seed) and PRNGKey(seed + 1)), and a
  step's dropout and sampling keys differ."""
  import jax
  import numpy as np

  from jaxcap import objectives, train_state

  keys = {(seed, purpose): np.asarray(train_state.stream(seed, purpose)).tobytes()
          for seed in range(3) for purpose in (train_state.INIT, train_state.TRAIN)}
  assert len(set(keys.values())) == len(keys)
  step = jax.random.fold_in(train_state.stream(0, train_state.TRAIN), 7)
  assert not np.array_equal(jax.random.fold_in(step, objectives.DROPOUT), jax.random.fold_in(step, objectives.SAMPLING))
