"""The top regime: the encoder's last stages trained on its cached trunk (`jaxcap.feeds.top`), with image-major
batches (`batching.ImageMajorSchedule`)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from jaxcap import checkpoint, feature_cache, objectives, train_lib
from jaxcap.data import batching
from jaxcap.feeds.top import top_modules
from jaxcap.models import encoders
from jaxcap.models.caption_model import CaptionModel, make_model


@pytest.mark.parametrize("name,size", [("small_cnn", 32), ("efficientnet_lite0", 64), ("resnet18", 64),
                                       ("resnet50_keras", 64)])
def test_trunk_then_top_is_the_whole_encoder_bit_for_bit(name, size):
  encoder = encoders.make_encoder(name, image_size=size)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, size, size, 3)), jnp.uint8)
  variables = encoder.init(jax.random.key(0), images)
  grid = encoder.apply(variables, images)[0]
  for stages in range(1, len(encoder.stage_starts) + 1):
    start = encoders.top_start(encoder, stages)
    trunk = encoder.apply(variables, images, span=(0, start))
    top = encoder.apply(variables, trunk, span=(start, encoder.num_layers))
    np.testing.assert_array_equal(np.asarray(top), np.asarray(grid), err_msg=f"top {stages}")


def test_stages_of_the_pretrained_encoders():
  """EfficientNet-Lite has 7 stages (the head trains with the last), ResNets 4."""
  lite0 = encoders.make_encoder("efficientnet_lite0")
  assert lite0.stage_starts == (1, 2, 4, 6, 9, 12, 16) and lite0.num_layers == 18
  assert top_modules(lite0, encoders.top_start(lite0, 1)) == ("block15", "head")
  assert encoders.make_encoder("resnet50").stage_starts == (1, 4, 8, 14)
  with pytest.raises(ValueError, match=r"train.top_stages must be in 1..4 .* got 5"):
    encoders.top_start(encoders.make_encoder("resnet50"), 5)


def test_image_major_schedule_batches_whole_images():
  # 7 images: five with 5 captions, one with 2 (cycled), one with 7 (5 drawn per epoch)
  counts = [5, 5, 2, 5, 7, 5, 5]
  image_index = np.repeat(np.arange(7), counts)
  lengths = np.arange(len(image_index)) % 9 + 3
  s = batching.ImageMajorSchedule(image_index, lengths, batch_size=10, per_image=5, seed=3)
  assert s.steps_per_epoch == 3
  for e in range(3):
    batches = s.epoch(e)
    images = [image_index[b].reshape(2, 5) for b in batches]
    for group in (g for b in images for g in b):
      assert len(set(group)) == 1                       # five captions of one image side by side
    seen = [g[0] for b in images for g in b]
    assert len(set(seen)) == 6                          # distinct images in an epoch
    for b in batches:
      for group in b.reshape(2, 5):
        n = counts[image_index[group[0]]]
        assert len(set(group)) == min(n, 5)             # without repeats where the image has five
  again = batching.ImageMajorSchedule(image_index, lengths, batch_size=10, per_image=5, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip(again.epoch(1), s.epoch(1)))  # a function of (seed, epoch)
  assert not all(np.array_equal(a, b) for a, b in zip(s.epoch(0), s.epoch(1)))
  with pytest.raises(ValueError, match="whole number of images"):
    batching.ImageMajorSchedule(image_index, lengths, batch_size=12, per_image=5)


def _top_config(tiny_config, regime="top", **extra):
  base = {"train.captions_per_image": 5, "train.batch_size": 10, "train.num_steps": 12, "train.eval_every": 0,
          "train.checkpoint_every": 0, "train.final_test_eval": False, "train.grad_clip": 1e9}
  return tiny_config(regime, **{**base, **extra})


@pytest.mark.slow
def test_top_frozen_gives_the_cached_grid_runs_losses(tiny_config, read_metrics, tmp_path):
  """With the top's learning rate 0, the top regime trains the decoder on the grids its frozen top computes from
  the float16 trunk; the cached run on the same image-major batches trains it on the float16 grids. Same
  losses, to the float16 rounding of the caches (rtol 1e-4)."""
  losses = {}
  for name, regime, extra in (("cached", "cached", {}), ("top", "top", {"train.encoder_learning_rate": 0.0})):
    config = _top_config(tiny_config, regime, **{"train.learning_rate": 1e-3, **extra})
    train_lib.train_and_evaluate(config, str(tmp_path / name))
    losses[name] = np.asarray([v for _, v in sorted(read_metrics(str(tmp_path / name)).items())])
  assert len(losses["top"]) == 12
  np.testing.assert_allclose(losses["top"], losses["cached"], rtol=1e-4)


@pytest.mark.slow
def test_top_run_trains_only_the_top_from_init_from(tiny_config, read_metrics, tmp_path):
  """Started from a cross-entropy run (train.init_from), the top regime changes the top stages and the decoder,
  leaves every encoder module below the cut and every BatchNorm statistic as they were (no weight decay on the
  frozen ones), and its loss falls."""
  ce = str(tmp_path / "ce")
  train_lib.train_and_evaluate(_top_config(tiny_config, "cached", **{"train.checkpoint_every": 12}), ce)
  top = str(tmp_path / "top")
  train_lib.train_and_evaluate(_top_config(tiny_config, "top", **{"train.init_from": ce, "train.num_steps": 30,
                                                                  "train.checkpoint_every": 30}), top)
  (before, _, _), (after, _, _) = checkpoint.load(ce), checkpoint.load(top)
  enc0, enc1 = before["params"]["encoder"], after["params"]["encoder"]
  assert set(enc0) == {"conv0", "bn0", "conv1", "bn1", "conv2", "bn2", "conv3", "bn3"}
  for m in enc0:
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(enc0[m]), jax.tree.leaves(enc1[m])))
    assert same == (m in ("conv0", "bn0", "conv1", "bn1")), m   # top_stages=2: conv2..bn3 train
  for a, b in zip(jax.tree.leaves(before["batch_stats"]), jax.tree.leaves(after["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  losses = read_metrics(top)
  assert np.mean([losses[s] for s in range(26, 31)]) < np.mean([losses[s] for s in range(1, 6)])


def test_top_gradients_equal_the_end_to_end_fine_tunes(tiny_config):
  """The gradients of the top stages from the cached trunk equal those of the whole model differentiated end to
  end on the images (encoder in inference mode for BatchNorm, as the top regime runs it): exactly (1e-6) when the
  end-to-end trunk is rounded to float16 as the cache stores it, and to 1% of the gradient's norm without."""
  config = _top_config(tiny_config)
  model = make_model(config.model, vocab_size=20)
  rng = np.random.default_rng(0)
  size = model.encoder.preprocessing.size
  images = jnp.asarray(rng.integers(0, 256, (2, size, size, 3)), jnp.uint8)
  tokens = jnp.asarray(np.concatenate([np.ones((10, 1)), rng.integers(4, 20, (10, 7)), np.full((10, 1), 2)], 1),
                       jnp.int32)
  batch = {"tokens": tokens, "mask": jnp.ones(tokens.shape, jnp.float32)}
  variables = model.init(jax.random.key(1), jnp.repeat(images, 5, axis=0), tokens[:, :-1])
  params, stats = variables["params"], variables["batch_stats"]
  start = encoders.top_start(model.encoder, config.train.top_stages)
  top = top_modules(model.encoder, start)

  def trunk_of(x):
    return model.apply(variables, x, method=lambda m, y: m.encoder(y, span=(0, start)))

  def end_to_end(round_trunk):
    def forward(model, params, batch_stats, batch, inputs, rng):
      v = {"params": params, "batch_stats": batch_stats}
      trunk = model.apply(v, jnp.repeat(batch["image"], 5, axis=0),
                          method=lambda m, y: m.encoder(y, span=(0, start)))
      trunk = trunk.astype(jnp.float16) if round_trunk else trunk
      grid = model.apply(v, trunk, start, method=CaptionModel.encode_top)
      logits, alphas = model.decoder.apply({"params": params["decoder"]}, grid, inputs, train=True,
                                           rngs={"dropout": rng})
      return logits, alphas, batch_stats
    return forward

  def top_grads(forward, batch):
    objective = objectives.cross_entropy(config, forward)
    loss = lambda p: objective(model, p, stats, batch, jax.random.key(2))[0]  # noqa: E731
    return {m: g for m, g in jax.grad(loss)(params)["encoder"].items() if m in top}

  trunk = np.asarray(trunk_of(images)).astype(np.float16)                        # what the cache holds
  cached = top_grads(objectives.top_forward(start, 5), {**batch, "trunk": jnp.repeat(trunk, 5, axis=0)})
  norm = optax_norm(cached)
  assert norm > 0
  for round_trunk, tol in ((True, 1e-6), (False, 1e-2)):
    e2e = top_grads(end_to_end(round_trunk), {**batch, "image": images})
    diff = optax_norm(jax.tree.map(lambda a, b: a - b, cached, e2e))
    assert diff <= tol * norm, (round_trunk, diff / norm)


def optax_norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def test_trunk_cache_is_keyed_by_the_trunk_weights_only(tiny_config, tmp_path):
  """The trunk's folder changes with the weights below the cut (a trunk from train.init_from's weights is not the
  pretrained file's) and the cut; the grid cache is keyed by the encoder's weights too (self-critical training
  from an adapted encoder must not read the frozen encoder's grids)."""
  config = _top_config(tiny_config)
  builder = type("B", (), {"data_dir": str(tmp_path)})()
  trunk = {"params": {"conv0": {"kernel": np.ones((3, 3), np.float32)}}}
  changed = {"params": {"conv0": {"kernel": np.full((3, 3), 2, np.float32)}}}
  d = feature_cache.directory_for(config, builder, 32, trunk, trunk=2)
  assert d == feature_cache.directory_for(config, builder, 32, jax.tree.map(np.copy, trunk), trunk=2)
  assert d != feature_cache.directory_for(config, builder, 32, changed, trunk=2)
  assert d != feature_cache.directory_for(config, builder, 32, trunk, trunk=3)
  assert os.path.basename(d).startswith("small_cnn-32-trunk2-")
  grid = feature_cache.directory_for(config, builder, 32, trunk)
  assert grid != d and os.path.basename(grid).startswith("small_cnn-32-") and "trunk" not in grid
  assert grid != feature_cache.directory_for(config, builder, 32, changed)
