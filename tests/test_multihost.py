"""Two processes on localhost (jax.distributed over 127.0.0.1, one CPU device each): they train in lockstep and
reach the same losses as one process with the same global batch, in each regime (cached, fine-tune on decoded
images, self-critical), and a SIGTERM or Ctrl-C to one of them stops both at the same step, saved once; validation
splits the dev images between them and both report the one-process figures."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(cmd, workdir):
  port = _free_port()
  return [subprocess.Popen(cmd + ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
                                  "--process_id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=ENV, cwd=ROOT) for i in range(2)]


STEPS = {"train.num_steps": 10, "train.eval_every": 0, "train.checkpoint_every": 5, "train.final_test_eval": False}


@pytest.fixture(scope="module")
def cross_entropy(train_cmd, tmp_path_factory):
  """A one-process cached run: the cached regime's reference and the self-critical runs' starting point."""
  workdir = str(tmp_path_factory.mktemp("multihost") / "cached_one")
  subprocess.run(train_cmd(workdir, {"train.regime": "cached", **STEPS}), check=True, capture_output=True, env=ENV,
                 cwd=ROOT)
  return workdir


def _regime(regime: str, cross_entropy: str) -> dict:
  over = {"train.regime": regime, **STEPS}
  if regime == "finetune":
    # Decoded images: batches a pure function of the step, whatever the process count (tf.data's stream has
    # each process read its own slice of the split, in another order than one process reads it).
    over["train.image_feed"] = "decoded"
  if regime == "self_critical":
    over.update({"train.init_from": cross_entropy, "train.select_metric": "cider", "train.learning_rate": 1e-4,
                 "train.warmup_steps": 0, "train.final_lr_fraction": 1.0, "train.batch_size": 4})
  return over


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["cached", "finetune", "self_critical"])
def test_two_processes_match_one(regime, cross_entropy, train_cmd, read_metrics, tmp_path):
  overrides = _regime(regime, cross_entropy)
  single = cross_entropy
  if regime != "cached":
    single = str(tmp_path / "one")
    subprocess.run(train_cmd(single, overrides), check=True, capture_output=True, env=ENV, cwd=ROOT)

  workdir = str(tmp_path / "two")
  procs = _launch(train_cmd(workdir, overrides), workdir)
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  assert json.loads(outs[0][0].strip().splitlines()[-1])["step"] == 10
  assert not any(l.startswith("{") for l in outs[1][0].splitlines())  # results come from process 0 only
  assert f"2 device(s), regime {regime}" in outs[0][1]
  if regime == "finetune":
    assert "image feed: decoded once into uint8" in outs[0][1]
  a, b = read_metrics(single), read_metrics(workdir)
  assert sorted(b) == sorted(a) == list(range(1, 11))
  np.testing.assert_allclose([b[s] for s in range(1, 11)], [a[s] for s in range(1, 11)], rtol=1e-5)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "5"]  # written once, complete


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_to_one_process_stops_both_at_one_saved_step_and_the_rerun_resumes(signum, train_cmd, read_metrics,
                                                                                   tmp_path):
  overrides = {"train.regime": "cached", "train.num_steps": 100_000, "train.eval_every": 0,
               "train.checkpoint_every": 0, "train.final_test_eval": False}
  workdir = str(tmp_path / "two")
  procs = _launch(train_cmd(workdir, overrides), workdir)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and not (os.path.exists(metrics) and len(read_metrics(workdir)) >= 20):
    assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-2000:]
    time.sleep(0.1)
  # Process 1 only: process 0 learns of it through JAX's preemption service (Ctrl-C goes through it as a SIGTERM).
  procs[1].send_signal(signum)
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  saved = os.listdir(os.path.join(workdir, "checkpoints"))
  assert len(saved) == 1, saved  # one save, by both processes together, at the step they agreed on
  step = int(saved[0])
  assert f"stopped by signal {int(signal.SIGTERM)} at step {step}" in outs[0][1]  # process 0 got no Ctrl-C
  assert json.loads(outs[0][0].strip().splitlines()[-1])["step"] == step

  rerun = _launch(train_cmd(workdir, {**overrides, "train.num_steps": step + 5}), workdir)
  outs = [p.communicate(timeout=300) for p in rerun]
  for p, (_, err) in zip(rerun, outs):
    assert p.returncode == 0, err[-2000:]
  assert f"resuming from {workdir}/checkpoints/{step}" in outs[0][1], outs[0][1][-3000:]
  assert json.loads(outs[0][0].strip().splitlines()[-1])["step"] == step + 5


# Validation of a trained tiny model's dev split (6 images) by one process, or by each of two when given
# --coordinator_address/--num_processes/--process_id; the dev grids record the rows this process reads.
VALIDATE_SCRIPT = """
import dataclasses, json, os, sys
import jax
flags = dict(zip(sys.argv[2::2], sys.argv[3::2]))
if flags:
  jax.distributed.initialize(flags["--coordinator_address"], int(flags["--num_processes"]),
                             int(flags["--process_id"]))
import ml_collections, numpy as np
from jax.sharding import Mesh
from jaxcap import checkpoint, feeds, train_lib, train_state


class Recorded:
  def __init__(self, rows):
    self.rows, self.read = rows, []

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, key):
    self.read += list(range(len(self.rows))[key])
    return self.rows[key]


workdir = sys.argv[1]
config = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
config.train.eval_batch_size, config.train.feed_placement = 2, "host"
builder, vocab, train, dev = train_lib.load_data(config, workdir, verbose=False)
model, variables = train_state.init_model(config, len(vocab), vocab.tokens)
feed = feeds.make_feed(config, builder, model, variables, vocab, train, dev, log=lambda *a: None, verbose=False)
dev_inputs = feed.eval_inputs("dev", variables, 0)
grids = Recorded(dev_inputs.grids)
feed.eval_inputs = lambda split, variables, limit=0: dataclasses.replace(dev_inputs, grids=grids)
state = jax.tree.map(np.asarray, checkpoint.load(os.path.join(workdir, "checkpoints", "20"))[0])
mesh = Mesh(np.asarray(jax.devices()), ("data",))
result = train_lib.validate(feed, model, state["params"], state["batch_stats"], "dev", config, vocab, mesh)
print(json.dumps({"metrics": {k: v for k, v in result.items() if k != "dev_decode_s"}, "read": grids.read}))
"""


@pytest.mark.slow
def test_two_processes_each_decode_half_the_dev_images_and_report_the_one_process_figures(trained):
  workdir, _ = trained
  one = subprocess.run([sys.executable, "-c", VALIDATE_SCRIPT, workdir], capture_output=True, text=True, env=ENV,
                       cwd=ROOT)
  assert one.returncode == 0, one.stderr[-3000:]
  procs = _launch([sys.executable, "-c", VALIDATE_SCRIPT, workdir], workdir)
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  single = json.loads(one.stdout.strip().splitlines()[-1])
  a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)
  assert single["read"] == list(range(6)) and single["metrics"]["dev_images"] == 6
  assert a["read"] == [0, 1, 2] and b["read"] == [3, 4, 5]  # each process read and decoded its half
  assert a["metrics"] == b["metrics"] == single["metrics"]  # and both report every image's figures
