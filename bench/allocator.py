"""glibc malloc kept (jaxcap's default, `jaxcap/allocator.py`) vs glibc's defaults (`JAXCAP_MALLOC=system`), on
the real Flickr8k features: a cross-entropy training run and the self-critical step, alternating the two
settings round by round so that both see the same machine.

    python -m bench.allocator --init_from workdirs/flickr8k_best/xe_seed0 [--data_dir ../shared/data/flickr8k] \
        [--rounds 2] [--steps 250] [--encoder efficientnet_lite1]

Per setting, medians over the rounds: the training run's steps/s (the trainer's own figure, logged every 50
steps, from step 100 on: after compilation), its wall, user and system CPU seconds and minor page faults
(os.wait4 of the child), and `bench.self_critical`'s seconds per step at 16 images x 5 samples. The cached
features must be there already (a training run of --encoder fills them). Prints one JSON object.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT, emit, machine

SETTINGS = {"kept": {}, "system": {"JAXCAP_MALLOC": "system"}}


def child(cmd: list[str], env: dict) -> tuple[str, dict]:
  """Runs cmd from the repository; (stdout, its wall seconds, CPU seconds and minor faults)."""
  t = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  out = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode:
    sys.exit(f"{' '.join(cmd)} failed with exit {proc.returncode}")
  return out, {"wall_s": time.perf_counter() - t, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
               "minor_faults": usage.ru_minflt}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--init_from", required=True, help="a cross-entropy workdir (the self-critical step's start)")
  p.add_argument("--data_dir", default="../shared/data/flickr8k")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--steps", type=int, default=250)
  p.add_argument("--encoder", default="efficientnet_lite1")
  a = p.parse_args()
  runs = {name: [] for name in SETTINGS}
  for _ in range(a.rounds):
    for name, env in SETTINGS.items():
      with tempfile.TemporaryDirectory() as workdir:
        _, train = child([sys.executable, "train.py", "--config", "configs/flickr8k_lite0.py",
                          f"--config.model.encoder={a.encoder}", f"--config.data.data_dir={a.data_dir}",
                          f"--config.train.num_steps={a.steps}", "--config.train.eval_every=1000000",
                          "--workdir", workdir], env)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
          rates = [r["steps_per_s"] for r in map(json.loads, f) if "steps_per_s" in r and r["step"] >= 100]
      out, scst = child([sys.executable, "-m", "bench.self_critical", "--init_from", a.init_from,
                         "--data_dir", a.data_dir, "--batch_size", "16", "--steps", "15"], env)
      runs[name].append({**{f"train_{k}": v for k, v in train.items()},
                         "train_steps_per_s": statistics.median(rates),
                         **{f"scst_{k}": v for k, v in scst.items()},
                         "scst_step_s": json.loads(out.strip().splitlines()[-1])["step_median_s"]})
  medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
  emit({"bench": "allocator", "machine": machine(), "steps": a.steps, "encoder": a.encoder, "runs": runs,
        "median": medians,
        "kept_vs_system": {"train_steps_per_s": medians["kept"]["train_steps_per_s"]
                           / medians["system"]["train_steps_per_s"],
                           "scst_step_s": medians["kept"]["scst_step_s"] / medians["system"]["scst_step_s"]}})


if __name__ == "__main__":
  main()
