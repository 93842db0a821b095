"""The device-resident cached feed and several steps per dispatch, on tiny synthetic data: no per-step
host-to-device copy, the host feed's batches, K steps per call equal to K single steps, exact resume; sharded over
four devices, each device draws only its own shard's rows, never a padding row, every caption once an epoch."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxcap import checkpoint, config_check, preemption, train_lib, train_state
from jaxcap.feeds import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = {"train.num_steps": 24, "train.log_every": 4, "train.eval_every": 0, "train.checkpoint_every": 0,
         "train.final_test_eval": False, "train.eval_num_images": 2}


def params(workdir, step):
  state, _, _ = checkpoint.load(os.path.join(workdir, "checkpoints", str(step)))
  return state["params"]["decoder"]


def relative_difference(a, b) -> float:
  """|a - b| / |b| over all parameters but the attention score's bias: softmax ignores a shift, so its gradient
  is zero in exact arithmetic and float32 noise in practice, which Adam scales up to lr-sized steps whatever
  order the sums ran in."""
  def flat(tree):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return np.concatenate([np.ravel(x) for p, x in leaves if "att_score']['bias" not in jax.tree_util.keystr(p)])
  return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


def run(tiny_config, workdir, **over):
  return train_lib.train_and_evaluate(tiny_config("cached", **{**STEPS, **over}), str(workdir))


@pytest.mark.slow
def test_device_feed_copies_nothing_to_the_devices_per_step_and_the_host_feed_does(tiny_config, monkeypatch,
                                                                                  tmp_path, capfd):
  # 24 steps cross an epoch end (22 steps an epoch): the once-an-epoch index table is the only upload.
  result = run(tiny_config, tmp_path / "device", **{"train.transfer_guard": "disallow_explicit", "train.feed_placement": "device"})
  assert result["step"] == 24
  assert "train feed: on the devices, replicated" in capfd.readouterr().err
  # The host feed under the same guard; its copies made in this thread, where the guard sees them.
  monkeypatch.setattr(host, "prefetch", lambda items, size=2: items)
  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    run(tiny_config, tmp_path / "host", **{"train.transfer_guard": "disallow_explicit", "train.feed_placement": "host"})


@pytest.mark.slow
def test_device_feed_gives_the_host_feeds_losses_and_k_steps_per_dispatch_equal_single_steps(tiny_config,
                                                                                            read_metrics, tmp_path):
  runs = {"host1": {"train.feed_placement": "host", "train.log_every": 1},
          "device1": {"train.feed_placement": "device", "train.log_every": 1},
          "host4": {"train.feed_placement": "host", "train.steps_per_dispatch": 4},
          "device4": {"train.feed_placement": "device", "train.steps_per_dispatch": 4}}
  for name, over in runs.items():
    run(tiny_config, tmp_path / name, **over)
  ref = read_metrics(tmp_path / "host1")
  assert sorted(ref) == list(range(1, 25))
  for name in runs:
    got = read_metrics(tmp_path / name)
    np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=2e-5, err_msg=name)
    assert relative_difference(params(tmp_path / name, 24), params(tmp_path / "host1", 24)) < 1e-4, name


@pytest.mark.slow
def test_device_feed_with_k_steps_resumes_exactly(tiny_config, read_metrics, monkeypatch, tmp_path):
  over = {"train.feed_placement": "device", "train.steps_per_dispatch": 4}
  run(tiny_config, tmp_path / "straight", **over)

  def stop_at_12(self, step):  # as SIGTERM would: save at the dispatch end, then stop
    self.signal = 15 if step >= 12 else None
    return bool(self.signal)

  with monkeypatch.context() as m:
    m.setattr(preemption.Preemption, "reached", stop_at_12)
    assert run(tiny_config, tmp_path / "resumed", **over)["step"] == 12
  assert run(tiny_config, tmp_path / "resumed", **over)["step"] == 24
  a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
  assert sorted(b) == sorted(a) == [4, 8, 12, 16, 20, 24]
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
  assert relative_difference(params(tmp_path / "resumed", 24), params(tmp_path / "straight", 24)) < 1e-5


def test_device_feed_that_fits_nowhere_names_the_sizes_and_the_host_feed(tiny_config, tmp_path):
  cfg = tiny_config("cached", **{**STEPS, "train.feed_placement": "device", "train.device_memory_gb": 1e-6})
  with pytest.raises(train_state.TrainError, match=r"train.feed_placement=device: the train data fits no device "
                                                 r"\(train grids .* GB.*use train.feed_placement=host"):
    train_lib.train_and_evaluate(cfg, str(tmp_path / "w"))


@pytest.mark.parametrize("field", ["log_every", "eval_every", "checkpoint_every"])
def test_intervals_must_be_multiples_of_steps_per_dispatch(tiny_config, field):
  cfg = tiny_config("cached", **{"train.steps_per_dispatch": 4, "train.log_every": 4, "train.eval_every": 8,
                                 "train.checkpoint_every": 0, f"train.{field}": 6})
  with pytest.raises(config_check.ConfigError, match=rf"train.{field}=6 is not allowed: must be a multiple of "
                                                     r"train.steps_per_dispatch=4"):
    config_check.check(cfg)


def test_chunks_end_on_multiples_of_k_and_where_the_objective_changes():
  a, b = object(), object()
  assert host.chunks(0, 10, 4, lambda s: a) == [(0, 4), (4, 4), (8, 2)]
  assert host.chunks(6, 13, 4, lambda s: a) == [(6, 2), (8, 4), (12, 1)]  # a resumed run: same ends
  assert host.chunks(0, 8, 4, lambda s: a if s < 5 else b) == [(0, 4), (4, 1), (5, 3)]


@pytest.mark.slow
def test_sharded_device_feed_on_four_devices_copies_nothing_per_step(tiny_config, tmp_path):
  # Replicated would need ~0.3 MB a device; the budget (0.15 MB) fits a quarter: each device holds and draws
  # from its own shard. A subprocess: the device count is fixed when JAX starts.
  cfg = tiny_config("cached", **{**STEPS, "train.feed_placement": "device", "train.device_memory_gb": 0.15 / 1024,
                                 "train.steps_per_dispatch": 2,
                                 "train.transfer_guard": "disallow_explicit"})
  script = f"""
import json, ml_collections
from jaxcap import train_lib
cfg = ml_collections.ConfigDict(json.loads({cfg.to_json()!r}))
print(json.dumps({{"step": train_lib.train_and_evaluate(cfg, {str(tmp_path / "w")!r})["step"]}}))
"""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "train feed: on the devices, sharded over 4" in out.stderr
  assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 24


# Draws every batch of two epochs through the sharded feed's own jitted draw (dispatches(), then draw() as the train
# step calls it) on four CPU devices, and records what each device got: image row i holds the value i + 1 and
# caption c's tokens are all c + 1, so a padding row (zeros) shows as -1.
DRAW_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
from jaxcap import device_feed
from jaxcap.data import batching
from jaxcap.feeds import host

captions_per_image, batch_size, k = json.loads(sys.argv[1])
n = len(captions_per_image)
image_index = np.repeat(np.arange(n, dtype=np.int32), captions_per_image)
m = len(image_index)
rows = np.arange(1, n + 1, dtype=np.float32)[:, None]
tokens = np.repeat(np.arange(1, m + 1, dtype=np.int32)[:, None], 4, axis=1)
pairs = batching.CaptionPairs(image_index, tokens, np.full(m, 4, np.int32))
feed = device_feed.DeviceCaptions(rows, pairs, batch_size, 0, False, 4, shards=4, n_devices=4, steps_per_dispatch=k)
mesh = Mesh(np.asarray(jax.devices()), ("data",))
position = {d: p for p, d in enumerate(mesh.devices.flat)}
plan = host.chunks(0, 2 * feed.steps_per_epoch, k, lambda step: None)
steps = []
for (first, count), (static, args) in zip(plan, feed.dispatches(plan, mesh)):
  draw = jax.jit(feed.draw(static, mesh), static_argnums=1)
  for i in range(count):
    batch = draw(args, i, jnp.int32(first + i))
    got = [None] * 4
    for g, t in zip(batch["grid"].addressable_shards, batch["tokens"].addressable_shards):
      assert g.device == t.device
      got[position[g.device]] = {"images": (np.asarray(g.data)[:, 0] - 1).astype(int).tolist(),
                                 "captions": (np.asarray(t.data)[:, 0] - 1).tolist()}
    steps.append(got)
print(json.dumps({"steps_per_epoch": feed.steps_per_epoch, "shard_images": feed.shard_images, "steps": steps}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("captions_per_image, every_caption", [
    ([5, 5, 5, 5, 5, 5, 10], True),   # 7 images: the last shard holds one image and a padding image row
    ([5, 5, 5, 5, 5, 5, 4], False),   # and 6 padding caption rows; the other shards draw 4 of their 10 an epoch
])
def test_sharded_device_feed_draws_each_devices_own_shard_no_padding_every_caption_once_an_epoch(
    captions_per_image, every_caption):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", DRAW_SCRIPT, json.dumps([captions_per_image, 8, 2])],
                       capture_output=True, text=True, env=env, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  drawn = json.loads(out.stdout.strip().splitlines()[-1])
  spe, per_shard = drawn["steps_per_epoch"], drawn["shard_images"]
  image_index = np.repeat(np.arange(len(captions_per_image)), captions_per_image)
  owner = image_index // per_shard  # the shard (device) that holds each caption and its image
  assert per_shard == 2 and len(drawn["steps"]) == 2 * spe
  for epoch in range(2):
    for device in range(4):
      got = [drawn["steps"][s][device] for s in range(epoch * spe, (epoch + 1) * spe)]
      captions = [c for g in got for c in g["captions"]]
      images = [i for g in got for i in g["images"]]
      assert len(captions) == spe * 2 and min(captions) >= 0 and min(images) >= 0, (epoch, device)  # no padding
      assert all(owner[c] == device for c in captions), (epoch, device, captions)  # its own shard's captions
      assert images == [int(image_index[c]) for c in captions], (epoch, device)  # each with its own image row
      assert len(set(captions)) == len(captions), (epoch, device, captions)  # no caption twice in an epoch
      if every_caption:
        assert sorted(captions) == np.flatnonzero(owner == device).tolist(), (epoch, device)
