"""The trainer on tiny synthetic data: learning, checkpoints, exact resume after SIGKILL, devices, errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxcap import checkpoint, evaluator, train_lib, train_state
from jaxcap.data import vocab as V

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("regime", [pytest.param(r, marks=pytest.mark.slow) for r in ("cached", "finetune")])
def test_training_learns_and_leaves_a_complete_workdir(regime, tiny_config, read_metrics, tmp_path):
  workdir = str(tmp_path / regime)
  result = train_lib.train_and_evaluate(tiny_config(regime, **{"train.num_steps": 60}), workdir)
  assert result["step"] == 60
  losses = read_metrics(workdir)
  assert np.mean([losses[s] for s in range(51, 61)]) < 0.7 * np.mean([losses[s] for s in range(1, 11)])
  for f in ("config.json", "vocab.json", "metrics.jsonl"):
    assert os.path.exists(os.path.join(workdir, f)), f
  # keep_checkpoints=2, plus the best on dev (one manager: the latest two and the best may coincide)
  assert sorted(map(int, os.listdir(os.path.join(workdir, "checkpoints")))) == sorted({50, 60, result["best_step"]})
  assert checkpoint.best(workdir).step == result["best_step"]
  assert not os.path.exists(os.path.join(workdir, "best"))
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  vocab = V.Vocab.load(os.path.join(workdir, "vocab.json"))
  assert "circle" in vocab.tokens
  # Validation decoded every dev image (generated split of 48 images: 6 dev, 6 test) into vocabulary words, and
  # the run reports the best of its evaluations.
  assert result["dev_images"] == 6 and result["test_images"] == 6
  assert result["dev_example"] and set(result["dev_example"].split()) <= set(vocab.tokens[4:])
  assert result["best_dev_bleu4"] == max(r["dev_bleu4"] for r in map(json.loads, open(
      os.path.join(workdir, "metrics.jsonl"))) if "dev_bleu4" in r and r["step"] <= 60)


@pytest.mark.slow
def test_decay_steps_stops_partway_down_the_longer_schedule(tiny_config, read_metrics, tmp_path):
  """A run of 20 steps with train.decay_steps=40 is the first half of the 40-step run (same lr, same batches),
  which is what stopping where a longer run peaked on dev relies on."""
  quiet = {"train.eval_every": 0, "train.checkpoint_every": 0, "train.final_test_eval": False}
  losses = {}
  for name, extra in {"long": {"train.num_steps": 40}, "cut": {"train.num_steps": 20, "train.decay_steps": 40},
                      "short": {"train.num_steps": 20}}.items():
    train_lib.train_and_evaluate(tiny_config("cached", **quiet, **extra), str(tmp_path / name))
    losses[name] = read_metrics(str(tmp_path / name))
  assert sorted(losses["cut"]) == list(range(1, 21))
  np.testing.assert_allclose([losses["cut"][s] for s in range(1, 21)], [losses["long"][s] for s in range(1, 21)],
                             rtol=1e-6)
  assert losses["short"][20] != losses["long"][20]  # its own 20-step cosine decays sooner


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["cached", "finetune", "top"])
def test_sigkill_mid_run_then_same_command_resumes_with_same_data_order(regime, train_cmd, read_metrics, tmp_path):
  overrides = {"train.num_steps": 40, "train.regime": regime}
  if regime == "top":  # image-major batches of 2 images x 5 captions
    overrides.update({"train.captions_per_image": 5, "train.batch_size": 10})
  straight = str(tmp_path / "straight")
  subprocess.run(train_cmd(straight, overrides), check=True, capture_output=True, cwd=ROOT)

  workdir = str(tmp_path / "killed")
  cmd = train_cmd(workdir, overrides)
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
  ckpts = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpts) and any(d.isdigit() and int(d) >= 20 for d in os.listdir(ckpts)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "training finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(read_metrics(workdir))
  assert killed_at < 40

  out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
  assert "resuming from" in out.stderr
  assert json.loads(out.stdout.strip().splitlines()[-1])["step"] == 40
  a, b = read_metrics(straight), read_metrics(workdir)
  assert sorted(b) == list(range(1, 41))
  np.testing.assert_allclose([b[s] for s in range(1, 41)], [a[s] for s in range(1, 41)], rtol=1e-5)


@pytest.mark.slow
def test_one_device_and_eight_simulated_devices_give_the_same_losses(train_cmd, read_metrics, tmp_path):
  losses = []
  for n in (1, 8):
    workdir = str(tmp_path / f"dev{n}")
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    cmd = train_cmd(workdir, {"train.regime": "cached", "train.num_steps": 5, "train.eval_every": 0,
                                      "train.checkpoint_every": 0})
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    losses.append(read_metrics(workdir))
  assert sorted(losses[0]) == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([losses[1][s] for s in range(1, 6)], [losses[0][s] for s in range(1, 6)], rtol=1e-4)


@pytest.mark.slow
def test_incompatible_checkpoint_names_the_field(trained):
  workdir, cfg = trained
  changed = cfg.copy_and_resolve_references()
  changed.model.hidden_dim = 64
  before = sorted(os.listdir(workdir))
  with pytest.raises(checkpoint.CheckpointError, match=r"model.hidden_dim: checkpoint has 32, config has 64"):
    train_lib.train_and_evaluate(changed, workdir)
  assert sorted(os.listdir(workdir)) == before  # refused before anything was written


def test_vocabulary_mismatch_is_reported(tiny_config, tmp_path):
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  V.Vocab(list(V.SPECIALS) + ["zebra"]).save(os.path.join(workdir, "vocab.json"))
  with pytest.raises(train_state.TrainError, match="vocab.json: vocabulary does not match"):
    train_lib.train_and_evaluate(tiny_config("cached"), workdir)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, read_metrics, tmp_path):
  workdir = str(tmp_path / "w")
  cfg = tiny_config("cached", **{"train.num_steps": 30, "train.checkpoint_every": 5})
  cfg.train.learning_rate = 1e30
  cfg.train.warmup_steps = 1
  with pytest.raises(train_state.TrainError, match=r"loss became nan at step \d+; stopped without saving"):
    train_lib.train_and_evaluate(cfg, workdir)
  for step in os.listdir(os.path.join(workdir, "checkpoints")):
    assert np.isfinite(read_metrics(workdir)[int(step)])


@pytest.mark.slow
def test_missing_dataset_is_one_clear_line(tmp_path):
  out = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--workdir", str(tmp_path / "w"),
                        "--config", os.path.join(ROOT, "configs", "flickr8k_lite0.py"),
                        f"--config.data.data_dir={tmp_path / 'nope'}"], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (f"error: config data.data_dir={str(tmp_path / 'nope')!r} is not a folder: "
                                                   f"set --config.data.data_dir=/path/to/flickr8k or JAXCAP_FLICKR8K_DIR")


# Validation of a trained tiny model's dev split (6 images, batches of 2) on however many devices XLA was given,
# its host-to-device copies logged by the transfer guard; then the dev grids decoded on the mesh and, as before
# the mesh, on one device.
VALIDATE_SCRIPT = """
import json, os, sys
import jax, ml_collections, numpy as np
from jax.sharding import Mesh
from jaxcap import checkpoint, evaluator, feeds, train_lib, train_state

workdir = sys.argv[1]
config = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
config.train.eval_batch_size = 2
builder, vocab, train, dev = train_lib.load_data(config, workdir, verbose=False)
model, variables = train_state.init_model(config, len(vocab), vocab.tokens)
feed = feeds.make_feed(config, builder, model, variables, vocab, train, dev, log=lambda *a: None, verbose=False)
state = jax.tree.map(np.asarray, checkpoint.load(os.path.join(workdir, "checkpoints", "20"))[0])
mesh = Mesh(np.asarray(jax.devices()), ("data",))
with jax.transfer_guard_host_to_device("log_explicit"):
  print("validation starts", file=sys.stderr, flush=True)
  result = train_lib.validate(feed, model, state["params"], state["batch_stats"], "dev", config, vocab, mesh)
  print("validation ends", file=sys.stderr, flush=True)
inputs = feed.eval_inputs("dev", variables, 0)
settings = evaluator.Settings(1, config.train.decode_max_len, 0.0, 2)
decoded = [evaluator.decode_grids(model.decoder, state["params"]["decoder"], inputs.grids, settings, mesh=m).tokens
           for m in (mesh, None)]
print(json.dumps({"metrics": {k: v for k, v in result.items() if k != "dev_decode_s"},
                  "tokens": decoded[0].tolist(), "one_device_tokens": decoded[1].tolist(),
                  "leaves": len(jax.tree.leaves((state["params"], state["batch_stats"])))}))
"""


@pytest.mark.slow
def test_validation_on_four_devices_gives_the_one_device_captions_and_copies_the_parameters_once(trained):
  workdir, _ = trained
  runs = {}
  for n in (1, 4):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "0"}  # the transfer guard's log lines
    out = subprocess.run([sys.executable, "-c", VALIDATE_SCRIPT, workdir], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    during = out.stderr.split("validation starts")[1].split("validation ends")[0]
    runs[n]["copies"] = [l for l in during.splitlines() if "host-to-device transfer" in l]
  assert runs[4]["tokens"] == runs[1]["tokens"] == runs[1]["one_device_tokens"]  # token for token
  assert runs[4]["metrics"] == runs[1]["metrics"] and runs[1]["metrics"]["dev_images"] == 6
  # Each parameter copied once to each device (float32), then only the batches' grids (float16), a shard to each
  # device: 3 batches of 2 on one device, 2 of 4 (the second half padding) on four.
  for n, batches in ((1, 3), (4, 2)):
    copies, leaves = runs[n]["copies"], runs[n]["leaves"]
    assert sum("float32" in c for c in copies) == leaves * n, copies
    assert sum("float16" in c for c in copies) == batches * n and len(copies) == (leaves + batches) * n, copies


def test_encoder_first_update_after_the_switch_equals_a_fresh_start():
  """With train.finetune_from_step > 0 the encoder's AdamW begins at the switch: its first update equals the first
  update of a run that trains the encoder from step 0 (its step count used to run through the frozen phase, so
  bias correction no longer scaled the first updates: ~3x too large)."""
  import jax

  from configs import default

  def first_update(start):
    c = default.get_config()
    c.train.update({"finetune_from_step": start, "warmup_steps": 0, "encoder_learning_rate": 1e-3,
                    "grad_clip": 1e9})
    tx = train_state.make_optimizer(c, total_steps=100, trainable=("encoder", "decoder"))
    params = {"encoder": {"w": np.ones((3, 4), np.float32)}, "decoder": {"w": np.ones((4,), np.float32)}}
    state = tx.init(params)
    zero = jax.tree.map(np.zeros_like, params)
    for _ in range(start):  # the frozen phase: the encoder gets no gradient
      _, state = tx.update(zero, state, params)
    grad = {"encoder": {"w": np.full((3, 4), 0.5, np.float32)}, "decoder": {"w": np.zeros((4,), np.float32)}}
    updates, _ = tx.update(grad, state, params)
    return np.asarray(updates["encoder"]["w"])

  fresh = first_update(0)
  assert np.abs(fresh).max() > 0
  np.testing.assert_allclose(first_update(20), fresh, rtol=1e-6)
