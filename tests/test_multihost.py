"""Two processes on localhost (jax.distributed over 127.0.0.1, one CPU device each) train in lockstep and
reach the same losses as one process with the same global batch."""
import json
import os
import socket
import subprocess

import numpy as np

from tests.test_train import ROOT, _train_cmd, read_metrics, synth  # noqa: F401


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(synth, tmp_path):  # noqa: F811
  overrides = {"train.regime": "cached", "train.num_steps": 10, "train.eval_every": 0,
               "train.checkpoint_every": 5, "train.final_test_eval": False}
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  single = str(tmp_path / "one")
  subprocess.run(_train_cmd(single, synth, overrides), check=True, capture_output=True, env=env, cwd=ROOT)

  workdir = str(tmp_path / "two")
  port = _free_port()
  procs = [subprocess.Popen(_train_cmd(workdir, synth, overrides) + [
      "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  assert json.loads(outs[0][0].strip().splitlines()[-1])["step"] == 10
  assert not any(l.startswith("{") for l in outs[1][0].splitlines())  # results come from process 0 only
  assert "2 device(s)" in outs[0][1]
  a, b = read_metrics(single), read_metrics(workdir)
  assert sorted(b) == list(range(1, 11))
  np.testing.assert_allclose([b[s] for s in range(1, 11)], [a[s] for s in range(1, 11)], rtol=1e-5)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "5"]  # written once, complete
