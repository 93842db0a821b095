"""The fine-tune feed of images decoded once (`images.DecodedImages`), on tiny synthetic data: tf.data's pixels,
no per-step host-to-device copy when device-resident, exact resume, augmentation on the devices that is a
function of the step, and a damaged pixel cache named in one line."""
import os

import jax
import numpy as np
import pytest

from jaxcap import augment, checkpoint, config_check, feature_cache, feeds, preemption, train_lib
from jaxcap.feeds import host, images
from jaxcap.data import DataError, batching, pipeline
from jaxcap.models.caption_model import encode_fn

STEPS = {"train.num_steps": 24, "train.log_every": 4, "train.eval_every": 0, "train.checkpoint_every": 0,
         "train.final_test_eval": False, "train.eval_num_images": 2, "train.image_feed": "decoded",
         "train.augment": True}


def run(tiny_config, workdir, **over):
  return train_lib.train_and_evaluate(tiny_config("finetune", **{**STEPS, **over}), str(workdir))


def params(workdir, step):
  state, _, _ = checkpoint.load(os.path.join(workdir, "checkpoints", str(step)))
  return state["params"]


def relative_difference(a, b) -> float:
  """|a - b| / |b| over the decoder's parameters but the attention score's bias (softmax ignores a shift: its
  gradient is float32 noise, which Adam scales up to lr-sized steps whatever order the sums ran in). The
  encoder's conv biases are the same case (BatchNorm follows and ignores them); the losses cover the encoder."""
  def flat(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return np.concatenate([np.ravel(x) for p, x in leaves if "att_score']['bias" not in jax.tree_util.keystr(p)])
  return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


@pytest.fixture(scope="module")
def feed(tiny_config):
  """A decoded feed on the devices, un-augmented, and the trainer's data and model it was made from."""
  cfg = tiny_config("finetune", **{**STEPS, "train.augment": False, "train.feed_placement": "device"})
  builder, vocab, train, dev = train_lib.load_data(cfg, "/nonexistent-workdir", False)
  from jaxcap import train_state
  model, variables = train_state.init_model(cfg, len(vocab))
  f = feeds.make_feed(cfg, builder, model, variables, vocab, train, dev, lambda *a: None, False)
  return f, builder, vocab, model, variables


@pytest.mark.slow
def test_decoded_batches_are_tf_datas_pixels_and_encode_alike(feed):
  f, builder, vocab, model, variables = feed
  assert isinstance(f, images.DecodedImages) and f.source.device is not None
  size = model.encoder.preprocessing.size
  # tf.data's train batches, un-augmented: each image is the decoded row of its caption's image, to the bit.
  [tf_batch] = [b for _, b in zip(range(1), pipeline.train_batches(
      builder, vocab, batch_size=16, max_len=12, preprocessing=model.encoder.preprocessing, seed=3))]
  rows = f.source.train_rows
  for image, tokens in zip(tf_batch["image"], tf_batch["tokens"]):
    match = np.flatnonzero((f.source.pairs.tokens == tokens).all(1))
    assert any(np.array_equal(image, rows[f.source.pairs.image_index[m]]) for m in match)
  # The device feed's batch of a step (gathered on the device, in the jitted call) is those rows.
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  plan = host.chunks(5, 6, 1, f.objective)
  static, args = next(iter(f.dispatches(plan, mesh)))
  batch = jax.jit(lambda a: f.draw(static, mesh)(a, 0, 5))(args)
  idx = f.source.schedule.batch(5)
  want = np.asarray(rows[f.source.pairs.image_index[idx]])
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, size, size, 3)
  np.testing.assert_array_equal(np.asarray(batch["image"]), want)
  np.testing.assert_array_equal(np.asarray(batch["tokens"]), f.source.pairs.tokens[idx, :static])
  # What the encoder makes of them (it normalizes on the device): tf.data's batch and the decoded one agree.
  encode = encode_fn(model)
  enc_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  np.testing.assert_allclose(np.asarray(encode(enc_vars, batch["image"])), np.asarray(encode(enc_vars, want)),
                             rtol=1e-5, atol=1e-5)


def test_augmentation_is_a_function_of_the_step_and_changes_pixels(feed):
  f = feed[0]
  pixels = np.asarray(f.source.train_rows[np.arange(8)])
  aug = jax.jit(lambda x, step: augment.augment(x, augment.key(0, step)))
  a, again, other = (np.asarray(aug(pixels, s)) for s in (7, 7, 8))
  assert a.dtype == np.uint8 and a.shape == pixels.shape
  np.testing.assert_array_equal(a, again)
  assert (np.abs(a.astype(int) - pixels).reshape(8, -1).max(1) > 0).all()   # every image changed
  assert (np.abs(a.astype(int) - other).reshape(8, -1).max(1) > 0).all()    # another step, other draws
  # A light change: the crop keeps 80-100% of the image, colours move by about a tenth.
  assert np.abs(a.astype(float) - pixels).mean() < 40


@pytest.mark.slow
def test_device_resident_decoded_feed_copies_nothing_per_step(tiny_config, monkeypatch, tmp_path, capfd):
  # 24 steps cross an epoch end (22 steps an epoch): the once-an-epoch index table is the only upload.
  assert run(tiny_config, tmp_path / "device", **{"train.transfer_guard": "disallow_explicit", "train.feed_placement": "device"})["step"] == 24
  err = capfd.readouterr().err
  assert "image feed: decoded once into uint8" in err and "train.image_feed=decoded" in err
  assert "train feed: on the devices, replicated; train images" in err


@pytest.mark.slow
def test_decoded_feed_on_host_or_device_gives_the_same_losses_and_resumes_exactly(tiny_config, read_metrics,
                                                                                 monkeypatch, tmp_path):
  run(tiny_config, tmp_path / "device", **{"train.feed_placement": "device"})
  run(tiny_config, tmp_path / "host", **{"train.feed_placement": "host"})

  def stop_at_12(self, step):  # as SIGTERM would: save at the dispatch end, then stop
    self.signal = 15 if step >= 12 else None
    return bool(self.signal)

  with monkeypatch.context() as m:
    m.setattr(preemption.Preemption, "reached", stop_at_12)
    assert run(tiny_config, tmp_path / "resumed", **{"train.feed_placement": "device"})["step"] == 12
  assert run(tiny_config, tmp_path / "resumed", **{"train.feed_placement": "device"})["step"] == 24
  ref = read_metrics(tmp_path / "device")
  assert sorted(ref) == [4, 8, 12, 16, 20, 24]
  for name in ("host", "resumed"):
    got = read_metrics(tmp_path / name)
    assert sorted(got) == sorted(ref), name
    np.testing.assert_allclose([got[s] for s in ref], [ref[s] for s in ref], rtol=2e-5, err_msg=name)
    assert relative_difference(params(tmp_path / name, 24)["decoder"], params(tmp_path / "device", 24)["decoder"]
                               ) < 1e-4, name


@pytest.mark.slow
def test_auto_streams_through_tf_data_when_the_decoded_images_exceed_the_budget(tiny_config, tmp_path, capfd):
  run(tiny_config, tmp_path / "w", **{"train.image_feed": "auto", "train.feature_memory_gb": 1e-6,
                                      "train.num_steps": 2, "train.log_every": 1})
  assert "image feed: tf.data (decoded and resized every epoch); train images 36 x 32x32x3" in capfd.readouterr().err


def test_a_damaged_pixel_cache_is_one_line_naming_the_file(feed, tmp_path):
  f, builder, _, model, _ = feed
  src = f.source.train_rows.path
  directory = tmp_path / "pixels"
  os.makedirs(directory)
  for ext in (".npy", ".json"):
    with open(src[:-4] + ext, "rb") as a, open(directory / f"train{ext}", "wb") as b:
      b.write(a.read())
  names, rows = feature_cache.decode(builder, "train", model.encoder.preprocessing, str(directory))
  assert rows.shape == f.source.train_rows.shape
  path = str(directory / "train.npy")
  os.truncate(path, os.path.getsize(path) - 100)
  with pytest.raises(DataError, match=rf"^{path}: damaged cache file \(\d+ bytes; its header says \(36, 32, 32, 3\) "
                                      rf"uint8 = \d+ bytes\); delete {directory} to rebuild it$"):
    feature_cache.decode(builder, "train", model.encoder.preprocessing, str(directory))
  with open(path, "wb") as b:
    b.write(b"not a numpy file")
  with pytest.raises(DataError, match=rf"^{path}: damaged cache file \(unreadable .npy header"):
    feature_cache.decode(builder, "train", model.encoder.preprocessing, str(directory))


def test_image_feed_is_checked(tiny_config):
  with pytest.raises(config_check.ConfigError, match=r"train.image_feed='tfdata' is not allowed: must be one of "
                                                     r"auto, decoded, stream"):
    config_check.check(tiny_config("finetune", **{"train.image_feed": "tfdata"}))


def test_cut_length_batches_of_the_decoded_feed_follow_the_schedule(feed):
  f = feed[0]
  [batch] = list(f.batches(3, 4))
  idx = f.source.schedule.batch(3)
  assert batch["tokens"].shape[1] == batching.cut_length(f.source.pairs.lengths[idx].max(), 4, 12)
