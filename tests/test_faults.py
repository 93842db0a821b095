"""Faults a long run meets, tried as a user would: kills at each point of the save protocol, damaged
checkpoints, full disks, two trainers on one workdir, bad configs, Ctrl-C, unreadable files. Each ends in the
right result (a resumed run equal to an uninterrupted one, nothing the user had lost) or one clear line.

Kills are injected by `tests.faults`: the trainer SIGKILLs itself, or pauses, at a named point of the save
protocol, so no test depends on timing.
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxcap import checkpoint, config_check, metric_writer, train_lib
from jaxcap.data import DataError, images, tfds_builder
from tests import faults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Saves at 10, 20, 30 and at 15 (dev evaluation at 15 and 30; 15 is not a regular save step, so a new best
# there is a save of its own).
RUN = {"train.num_steps": 30, "train.checkpoint_every": 10, "train.eval_every": 15}
RESULT_KEYS = ("step", "best_step", "best_dev_bleu4", "test_bleu4", "test_bleu1", "dev_bleu4")


def _run(cmd, env=None, **kw):
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, **kw)


def _result(proc) -> dict:
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _records(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _losses(workdir) -> dict:
  """step -> loss; asserts each step was logged once (a resumed run drops the records it replays)."""
  recs = [r for r in _records(workdir) if "loss" in r]
  steps = [r["step"] for r in recs]
  assert len(steps) == len(set(steps)), f"steps logged twice: {sorted(s for s in set(steps) if steps.count(s) > 1)}"
  return {r["step"]: r["loss"] for r in recs}


def _assert_same_run(workdir, result, straight):
  """The resumed run equals the uninterrupted one: every loss, the dev records, the best and its test BLEU."""
  ref_dir, ref = straight
  a, b = _losses(ref_dir), _losses(workdir)
  assert sorted(b) == sorted(a)
  np.testing.assert_allclose([b[s] for s in sorted(a)], [a[s] for s in sorted(a)], rtol=1e-6)
  for k in RESULT_KEYS:
    assert result.get(k) == ref.get(k), (k, result.get(k), ref.get(k))
  dev = [r for r in _records(workdir) if "dev_bleu4" in r]
  assert [r["step"] for r in dev] == [15, 30]  # each evaluation once
  assert len([r for r in _records(workdir) if "selected_on" in r]) == 1
  # The JSON's best pairs with the dev record of that step, and the best save is the one on disk.
  best = max(dev, key=lambda r: r["dev_bleu4"])
  assert (result["best_step"], result["best_dev_bleu4"]) == (best["step"], best["dev_bleu4"])
  assert checkpoint.best(workdir).step == best["step"]
  assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if checkpoint.TMP_MARK in n]


def _error_line(proc) -> str:
  """The one line a user-fixable failure prints: stderr's last line, and no traceback anywhere."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def straight(train_cmd, tmp_path_factory):
  """(workdir, result) of the uninterrupted run every faulty run is compared with."""
  workdir = str(tmp_path_factory.mktemp("straight") / "w")
  return workdir, _result(_run(train_cmd(workdir, RUN)))


# ---------------------------------------------------------------------------------------------------------
# 1. SIGKILL at each point of the save protocol
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fault", [
    "save@15",     # a new best on dev, its save not yet issued
    "write@15",    # the best save written to its tmp dir, not committed
    "commit@15",   # the best save committed, the older saves not yet removed
    "write@30",    # the last save (latest and best at once) not committed
    "gc@30",       # the run complete: the rerun trains nothing and must report the same best and test BLEU
])
def test_sigkill_at_each_point_of_the_save_protocol_then_rerun_equals_uninterrupted(fault, straight, train_cmd,
                                                                                     tmp_path):
  workdir = str(tmp_path / "w")
  killed = _run(faults.command(train_cmd(workdir, RUN), fault))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  point, step = fault.split("@")
  tmp_dirs = [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if checkpoint.TMP_MARK in n]
  assert bool(tmp_dirs) == (point == "write")  # the kill left an unfinished save exactly when it should

  rerun = _run(train_cmd(workdir, RUN))
  result = _result(rerun)
  if tmp_dirs:
    assert f"removed {os.path.join(workdir, 'checkpoints', tmp_dirs[0])}: an unfinished save" in rerun.stderr
  _assert_same_run(workdir, result, straight)
  if fault == "gc@30":  # a finished workdir: another run changes nothing and reports the same again
    again = _result(_run(train_cmd(workdir, RUN)))
    assert {k: again.get(k) for k in RESULT_KEYS} == {k: result.get(k) for k in RESULT_KEYS}
    assert len([r for r in _records(workdir) if "selected_on" in r]) == 1


# ---------------------------------------------------------------------------------------------------------
# 2. Damaged checkpoints: a damaged file in each part of the latest one, then of the best one
# ---------------------------------------------------------------------------------------------------------
def _damage(step_dir: str, part: str) -> str:
  """Damages one file of a checkpoint as a disk, a crash or a careless hand would; returns what it did."""
  if part == "state/_METADATA":
    os.remove(os.path.join(step_dir, part))
    return "deleted"
  if part in ("state/manifest.ocdbt", "state/ocdbt.process_0/manifest.ocdbt", "_CHECKPOINT_METADATA"):
    open(os.path.join(step_dir, part), "w").close()
    return "emptied"
  if part == "state/data":
    d = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    biggest = max(os.listdir(d), key=lambda n: os.path.getsize(os.path.join(d, n)))
    with open(os.path.join(d, biggest), "r+b") as f:
      f.truncate(os.path.getsize(os.path.join(d, biggest)) // 2)
    return "truncated"
  if part in ("meta/metadata", "metrics/metrics"):
    path = os.path.join(step_dir, part)
    with open(path, "r+b") as f:
      f.truncate(max(os.path.getsize(path) // 2, 1))
    return "truncated"
  raise ValueError(part)


# The files a restore needs, and the ones it does not (damaging those must lose nothing and say nothing).
NEEDED = ["state/_METADATA", "state/manifest.ocdbt", "state/data", "meta/metadata"]
NOT_NEEDED = ["state/ocdbt.process_0/manifest.ocdbt", "_CHECKPOINT_METADATA"]


@pytest.fixture(scope="module")
def finished(tiny_config, tmp_path_factory):
  """(workdir, config, result) of a finished in-process run with the fault suite's intervals."""
  workdir = str(tmp_path_factory.mktemp("finished") / "w")
  cfg = tiny_config("finetune", **RUN)
  return workdir, cfg, train_lib.train_and_evaluate(cfg, workdir)


def _rerun_damaged(finished, tmp_path, capsys, step: int, part: str):
  src, cfg, ref = finished
  workdir = str(tmp_path / "w")
  shutil.copytree(src, workdir)
  _damage(os.path.join(workdir, "checkpoints", str(step)), part)
  capsys.readouterr()
  result = train_lib.train_and_evaluate(cfg, workdir)
  err = capsys.readouterr().err
  for k in RESULT_KEYS:
    assert result.get(k) == ref.get(k), (k, result.get(k), ref.get(k))
  a, b = _losses(src), _losses(workdir)
  np.testing.assert_allclose([b[s] for s in range(1, 31)], [a[s] for s in range(1, 31)], rtol=1e-6)
  return workdir, err


@pytest.mark.slow
@pytest.mark.parametrize("part", NEEDED + NOT_NEEDED)
def test_damaged_latest_checkpoint_is_moved_aside_and_training_resumes_from_the_one_before(
    part, finished, tmp_path, capsys):
  workdir, err = _rerun_damaged(finished, tmp_path, capsys, 30, part)
  latest = os.path.join(workdir, "checkpoints", "30")
  notes = [line for line in err.splitlines() if "cannot be restored" in line]
  if part in NOT_NEEDED:  # still restores: nothing lost, nothing to say
    assert not notes and f"resuming from {latest} " in err, err[-3000:]
    return
  assert len(notes) == 1 and notes[0].startswith(f"checkpoint {latest} cannot be restored (") and \
      "moved to" in notes[0], err[-3000:]
  moved = os.listdir(os.path.join(workdir, "damaged"))
  assert len(moved) == 1 and moved[0].startswith("30-")  # kept, never deleted
  assert f"resuming from {workdir}/checkpoints/20 " in err


@pytest.mark.slow
def test_damaged_metrics_of_the_best_are_rewritten_from_its_meta(finished, tmp_path, capsys):
  best = finished[2]["best_step"]
  workdir, err = _rerun_damaged(finished, tmp_path, capsys, best, "metrics/metrics")
  assert f"checkpoint {workdir}/checkpoints/{best}: its metrics file could not be read; rewritten from its meta" \
      in err, err[-3000:]


@pytest.mark.slow
def test_when_no_checkpoint_restores_one_line_says_what_to_do_and_nothing_is_moved(finished, tmp_path):
  src, cfg, _ = finished
  workdir = str(tmp_path / "w")
  shutil.copytree(src, workdir)
  steps = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  for s in steps:
    _damage(os.path.join(workdir, "checkpoints", s), "state/_METADATA")
  with pytest.raises(checkpoint.CheckpointError, match=r"^no checkpoint in .*/checkpoints restores \(newest: step "
                     r"30: .*\); move .* aside to start over, or use another --workdir$"):
    train_lib.train_and_evaluate(cfg, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == steps
  assert not os.path.exists(os.path.join(workdir, "damaged"))


@pytest.mark.slow
@pytest.mark.parametrize("part", ["state/data", "meta/metadata"])
def test_damaged_best_checkpoint_evaluate_and_caption_fall_back_with_one_line(part, trained, tmp_path):
  src, cfg = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(src, workdir)
  best = checkpoint.best(workdir)
  _damage(best.path, part)
  nxt = checkpoint.find(workdir)[1]
  image = os.path.join(cfg.data.synthetic_dir, "Images", "synth_00001.jpg")
  cap = _run([sys.executable, "-m", "jaxcap.caption", "--checkpoint", workdir, "--format", "jsonl", image])
  assert cap.returncode == 0, cap.stderr[-3000:]
  _one_warning(cap.stderr, best.path, nxt.path)
  assert isinstance(json.loads(cap.stdout.splitlines()[0])["caption"], str)
  ev = _run([sys.executable, "-m", "jaxcap.evaluate", "--checkpoint", workdir, "--split", "test", "--beam", "1",
             "--no_meteor", "--batch_size", "4", "--out", str(tmp_path / "p.jsonl")])
  assert ev.returncode == 0, ev.stderr[-3000:]
  _one_warning(ev.stderr, best.path, nxt.path)
  assert json.loads(ev.stdout.strip().splitlines()[-1])["checkpoint"] == nxt.path
  assert os.path.isdir(best.path)  # a reader reports, it does not rearrange the workdir


def _one_warning(stderr: str, bad: str, used: str) -> None:
  lines = [line for line in stderr.splitlines() if "cannot be read" in line]
  assert len(lines) == 1 and lines[0].startswith(f"warning: checkpoint {bad} cannot be read (") and \
      lines[0].endswith(f"; using {used} instead"), stderr[-3000:]
  assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr[-3000:]


def test_captioner_falls_back_from_a_damaged_best_and_says_so(trained, tmp_path):
  from jaxcap.inference import Captioner
  src, _ = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(src, workdir)
  best = checkpoint.best(workdir)
  _damage(best.path, "state/_METADATA")
  warnings = []
  cap = Captioner.load(workdir, warn=warnings.append)
  assert cap.source != best.path and len(warnings) == 1 and best.path in warnings[0]
  assert cap.warnings == warnings
  for ref in checkpoint.find(workdir):
    if ref != best:
      _damage(ref.path, "state/_METADATA")
  with pytest.raises(checkpoint.CheckpointError, match=r"^no checkpoint in .* can be read \(.*\); retrain"):
    Captioner.load(workdir)


@pytest.mark.slow
def test_app_shows_the_fallback_warning(trained, tmp_path, monkeypatch):
  from streamlit.testing.v1 import AppTest
  src, _ = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(src, workdir)
  best = checkpoint.best(workdir)
  _damage(best.path, "state/_METADATA")
  monkeypatch.setenv("JAXCAP_CHECKPOINT", workdir)
  at = AppTest.from_file(os.path.join(ROOT, "serve_app.py"), default_timeout=180)
  at.run()
  assert not at.exception
  assert any(best.path in w.value and "cannot be read" in w.value for w in at.warning)


def test_workdir_of_the_older_layout_is_read(trained, tmp_path):
  """A workdir of the older two-directory layout keeps its best in best/<step>: still the first pick."""
  from jaxcap.inference import Captioner
  src, _ = trained
  workdir = str(tmp_path / "w")
  shutil.copytree(src, workdir)
  best = checkpoint.best(workdir)
  os.makedirs(os.path.join(workdir, "best"))
  os.replace(best.path, os.path.join(workdir, "best", str(best.step)))
  assert Captioner.load(workdir).source == os.path.join(workdir, "best", str(best.step))


# ---------------------------------------------------------------------------------------------------------
# 3. Full disks (a small tmpfs; needs root)
# ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _tmpfs(path, size: str):
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root")
  out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
  if out.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
  try:
    yield str(path)
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: str, leave: int = 0) -> str:
  """Fills `disk` up, then frees `leave` bytes; returns the filler file (delete it to make room again)."""
  filler = os.path.join(disk, "filler")
  fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
  with contextlib.suppress(OSError):  # unbuffered: nothing left to flush (and fail) at close
    while True:
      os.write(fd, b"\0" * 65536)
  os.close(fd)
  if leave:
    os.truncate(filler, max(os.path.getsize(filler) - leave, 0))
  return filler


@pytest.mark.slow
def test_disk_full_stops_the_run_at_once_with_one_line_and_the_rerun_resumes_exactly(train_cmd, tmp_path):
  # Metrics and evaluations only at the end, so after step 20 the checkpoint is the only thing written.
  run = {**RUN, "train.log_every": 100, "train.eval_every": 0}
  straight = _result(_run(train_cmd(str(tmp_path / "straight"), run)))
  with _tmpfs(tmp_path / "disk", "16m") as disk:
    workdir = os.path.join(disk, "w")
    proc = subprocess.Popen(faults.command(train_cmd(workdir, run), "save@20:pause"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    pause = os.path.join(workdir, faults.PAUSE_FILE)
    deadline = time.time() + 240
    while not os.path.exists(pause):
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
      time.sleep(0.1)
    filler = _fill(disk)
    os.remove(pause)
    out, err = proc.communicate(timeout=240)
    line = _error_line(subprocess.CompletedProcess([], proc.returncode, out, err))
    ckpts = os.path.join(workdir, "checkpoints")
    assert line == (f"error: cannot save checkpoint {ckpts}/20: disk full (No space left on device); training "
                    f"stopped, the last good checkpoint, {ckpts}/10, restores intact. Free some space and rerun "
                    f"to resume"), err[-3000:]
    assert len(err.strip().splitlines()) < 20, err
    assert [n for n in os.listdir(ckpts) if checkpoint.TMP_MARK not in n] == ["10"]  # the good one kept
    os.remove(filler)
    rerun = _run(train_cmd(workdir, run))
    result = _result(rerun)
    assert f"resuming from {ckpts}/10 " in rerun.stderr
    assert not [n for n in os.listdir(ckpts) if checkpoint.TMP_MARK in n]  # remains of the failed save removed
  for k in RESULT_KEYS:
    assert result.get(k) == straight.get(k), (k, result.get(k), straight.get(k))


@pytest.mark.slow
def test_read_only_checkpoints_stop_the_run_with_one_line_and_the_process_exits(straight, train_cmd, tmp_path):
  # The save fails before Orbax starts writing, and its signalling threads wait forever: the process must
  # still exit after its error line.
  workdir = str(tmp_path / "w")
  shutil.copytree(straight[0], workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  if os.geteuid() != 0:
    pytest.skip("a read-only bind mount needs root (and root ignores file modes)")
  if subprocess.run(["mount", "--bind", "-o", "ro", ckpts, ckpts], capture_output=True).returncode:
    pytest.skip("cannot bind-mount read-only here")
  try:
    proc = _run(train_cmd(workdir, {**RUN, "train.num_steps": 40}), timeout=240)
  finally:
    subprocess.run(["umount", "-l", ckpts], check=False)
  assert _error_line(proc) == (f"error: cannot save checkpoint {ckpts}/40: read-only file system; training "
                               f"stopped, the last good checkpoint, {ckpts}/30, restores intact. Use a writable "
                               f"location and rerun to resume"), proc.stderr[-3000:]


def test_tfds_preparation_on_a_full_disk_is_one_line_and_leaves_nothing_taken_for_finished(synth_dir, tmp_path):
  with _tmpfs(tmp_path / "disk", "4m") as disk:
    filler = _fill(disk, leave=64 * 1024)
    tfds_dir = os.path.join(disk, "tfds")
    with pytest.raises(DataError, match=r"cannot prepare the dataset \(disk full \(No space left on device\)\); "
                                        r"free some space and rerun") as e:
      tfds_builder.prepare(synth_dir, tfds_dir, verbose=False)
    assert "\n" not in str(e.value)
    os.remove(filler)
    builder = tfds_builder.prepare(synth_dir, tfds_dir, verbose=False)  # prepared from scratch, complete
    assert builder.info.splits["train"].num_examples > 0
    assert os.path.exists(os.path.join(builder.data_dir, tfds_builder.REPORT_FILE))


@pytest.mark.slow
def test_feature_cache_on_a_full_disk_is_one_line_and_leaves_no_half_cache(synth_dir, tmp_path):
  import jax
  from jaxcap import feature_cache
  from jaxcap.models import encoders
  builder = tfds_builder.prepare(synth_dir, str(tmp_path / "tfds"), verbose=False)
  enc = encoders.make_encoder("small_cnn", image_size=32)
  variables = enc.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.uint8))
  with _tmpfs(tmp_path / "disk", "1m") as disk:
    filler = _fill(disk, leave=16 * 1024)
    directory = os.path.join(disk, "features")
    with pytest.raises(DataError, match=r"features: cannot write the feature cache \(disk full"):
      feature_cache.extract(builder, "train", enc, variables, directory, 8, verbose=False)
    assert not os.listdir(directory)
    os.remove(filler)
    names, feats = feature_cache.extract(builder, "train", enc, variables, directory, 8, verbose=False)
    assert len(names) == len(feats) == builder.info.splits["train"].num_examples


# ---------------------------------------------------------------------------------------------------------
# 4. Two trainers on one workdir
# ---------------------------------------------------------------------------------------------------------
def _start_paused(cmd, workdir, fault):
  proc = subprocess.Popen(faults.command(cmd, fault), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT)
  pause = os.path.join(workdir, faults.PAUSE_FILE)
  deadline = time.time() + 240
  while not os.path.exists(pause):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.1)
  return proc, pause


@pytest.mark.slow
def test_second_trainer_on_a_workdir_exits_at_once_naming_the_holder(straight, train_cmd, tmp_path):
  workdir = str(tmp_path / "w")
  first, pause = _start_paused(train_cmd(workdir, RUN), workdir, "save@10:pause")
  t0 = time.time()
  second = _run(train_cmd(workdir, RUN))
  line = _error_line(second)
  assert line.startswith(f"error: {workdir} is in use by another trainer (host {socket.gethostname()}, "
                         f"pid {first.pid}, since ") and line.endswith("wait for it to finish or use another --workdir")
  assert time.time() - t0 < 60  # before any data or model work
  os.remove(pause)
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-3000:]
  _assert_same_run(workdir, json.loads(out.strip().splitlines()[-1]), straight)


@pytest.mark.slow
def test_lock_of_a_killed_trainer_is_taken_over(straight, train_cmd, tmp_path):
  workdir = str(tmp_path / "w")
  first, pause = _start_paused(train_cmd(workdir, RUN), workdir, "save@20:pause")
  first.kill()
  first.communicate()
  os.remove(pause)
  rerun = _run(train_cmd(workdir, RUN))
  assert f"took over {workdir}/train.lock from a trainer that is gone (host {socket.gethostname()}, " \
         f"pid {first.pid}, since " in rerun.stderr
  _assert_same_run(workdir, _result(rerun), straight)


def test_workdir_lock_in_process(tmp_path):
  lock = checkpoint.WorkdirLock(str(tmp_path))
  with pytest.raises(checkpoint.CheckpointError, match=rf"^{tmp_path} is in use by another trainer \(host .*, pid "
                     rf"{os.getpid()}, since .*\); wait for it to finish or use another --workdir$"):
    checkpoint.WorkdirLock(str(tmp_path))
  lock.release()
  notes = []
  checkpoint.WorkdirLock(str(tmp_path), notes.append).release()
  assert notes == []  # released cleanly: nothing to take over


# ---------------------------------------------------------------------------------------------------------
# 5. Bad config values: one line naming the field, the value and what is allowed, before any work
# ---------------------------------------------------------------------------------------------------------
# ConfigDict keeps each field's type (a string for an int field fails at the command line already), so a
# string or boolean field can only go wrong as None.
BAD = {
    "seed": -1, "data.data_dir": None, "data.synthetic": None, "data.synthetic_dir": None,
    "data.synthetic_num_images": 4, "data.synthetic_size": 8, "data.tfds_dir": None, "data.max_len": 1,
    "data.min_count": 0, "data.feature_cache_dir": None, "model.encoder": "resnet5O", "model.pretrained": None,
    "model.image_size": 0, "model.decoder_mode": "atend", "model.embed_dim": 0, "model.hidden_dim": -8,
    "model.attention_dim": 0, "model.dropout": 1.0, "model.embed_dropout": -0.1, "model.deep_output": None,
    "model.dtype": "float16", "model.depthwise_impl": "fast", "train.regime": "cache", "train.batch_size": 0,
    "train.num_epochs": -1, "train.num_steps": -1, "train.learning_rate": -1e-3, "train.warmup_steps": -5,
    "train.decay_steps": -1, "train.final_lr_fraction": 1.5, "train.weight_decay": -1.0, "train.grad_clip": 0.0,
    "train.label_smoothing": 1.0, "train.attention_penalty": float("nan"), "train.length_bucketing": None,
    "train.encoder_learning_rate": float("inf"), "train.finetune_from_step": -1, "train.augment": None,
    "train.log_every": 0, "train.eval_every": -500, "train.checkpoint_every": -1, "train.keep_checkpoints": 0,
    "train.eval_num_images": -1, "train.decode_max_len": 0, "train.final_test_eval": None,
    "train.eval_batch_size": 0, "model.attention_backward": "manual_vjp", "train.init_from": None,
    "train.select_metric": "meteor", "train.scst_samples": 1, "train.scst_temperature": 0.0,
    "train.scst_baseline": "mean", "train.feature_store": "disk", "train.feature_memory_gb": -1.0,
    "data.dataset": "coco", "data.karpathy_json": None, "data.use_restval": None, "train.feed_placement": "gpu",
    "train.device_memory_gb": -1.0, "train.steps_per_dispatch": 0, "train.transfer_guard": "never", "train.image_feed": "memory",
    "model.input_size": 16, "train.captions_per_image": -1, "train.top_stages": 0,
}


def test_every_checked_field_has_a_bad_value_here():
  assert set(BAD) == set(config_check.rules())


@pytest.mark.parametrize("field", sorted(BAD))
def test_bad_config_value_is_one_line_naming_field_value_and_what_is_allowed(field, tiny_config, tmp_path):
  cfg = tiny_config("finetune")
  section, name = field.split(".") if "." in field else (None, field)
  with cfg.unlocked():
    if section:
      cfg[section][name] = BAD[field]
    else:
      cfg[name] = BAD[field]
  workdir = tmp_path / "w"
  with pytest.raises(config_check.ConfigError) as e:
    train_lib.train_and_evaluate(cfg, str(workdir))
  msg = str(e.value)
  assert msg.startswith(f"config {field}={BAD[field]!r} is not allowed: must be "), msg
  assert "\n" not in msg
  assert not workdir.exists()  # before any work


def test_no_length_at_all_and_batch_not_divisible_by_devices(tiny_config):
  cfg = tiny_config("finetune", **{"train.num_steps": 0, "train.num_epochs": 0})
  with pytest.raises(config_check.ConfigError, match="set one of them to a positive number"):
    config_check.check(cfg)
  with pytest.raises(config_check.ConfigError, match=r"train.batch_size=8 is not allowed: must be divisible by "
                                                     r"the 3 devices"):
    config_check.check(tiny_config("finetune"), device_count=3)


@pytest.mark.slow
@pytest.mark.parametrize("override,expected", [
    ("train.batch_size=0", "config train.batch_size=0 is not allowed: must be an integer >= 1"),
    ("train.learning_rate=-0.001", "config train.learning_rate=-0.001 is not allowed: must be a finite number > 0"),
    ("data.max_len=1", "config data.max_len=1 is not allowed: must be an integer >= 3 (<start>, a word and <end>)"),
    ("model.encoder=resnet5O", "config model.encoder='resnet5O' is not allowed: must be one of small_cnn, "),
    ("model.decoder_mode=atend", "config model.decoder_mode='atend' is not allowed: must be one of show_tell, "
                                 "attend"),
    ("train.num_steps=-1", "config train.num_steps=-1 is not allowed: must be an integer >= 0"),
])
def test_bad_config_on_the_command_line_is_one_line(override, expected, train_cmd, tmp_path):
  workdir = tmp_path / "w"
  cmd = [c for c in train_cmd(str(workdir), RUN) if not c.startswith(f"--config.{override.split('=')[0]}=")]
  line = _error_line(_run(cmd + [f"--config.{override}"]))
  assert line.startswith("error: " + expected), line
  assert not workdir.exists()


# ---------------------------------------------------------------------------------------------------------
# 6. Small ones: Ctrl-C, replayed metrics, unreadable files
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_saves_and_stops_like_sigterm_and_the_rerun_resumes(straight, train_cmd, tmp_path):
  workdir = str(tmp_path / "w")
  proc, pause = _start_paused(train_cmd(workdir, RUN), workdir, "save@20:pause")
  proc.send_signal(signal.SIGINT)
  time.sleep(0.5)
  os.remove(pause)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
  assert "stopped by signal 2 at step 21; checkpoint saved, rerun to resume" in err
  assert json.loads(out.strip().splitlines()[-1])["step"] == 21
  rerun = _run(train_cmd(workdir, RUN))
  assert f"resuming from {workdir}/checkpoints/21" in rerun.stderr
  _assert_same_run(workdir, _result(rerun), straight)


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_without_saving(train_cmd, tmp_path):
  workdir = str(tmp_path / "w")
  proc, pause = _start_paused(train_cmd(workdir, RUN), workdir, "save@10:pause")
  proc.send_signal(signal.SIGINT)
  time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 130
  assert err.strip().splitlines()[-1] == "interrupted again: exiting now without saving"
  assert "Traceback" not in err


def test_metric_writer_drops_records_past_the_resumed_step(tmp_path):
  workdir = str(tmp_path)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step in range(1, 8):
      f.write(json.dumps({"step": step, "loss": float(step)}) + "\n")
    f.write(json.dumps({"step": 4, "test_bleu4": 0.5, "selected_on": "dev_bleu4"}) + "\n")
    f.write('{"step": 8, "lo')  # cut by a kill
  metric_writer.MetricWriter(workdir, True, resume_step=5).close()
  assert [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))] == [1, 2, 3, 4, 5]


def test_unreadable_image_is_not_called_corrupt(tmp_path, monkeypatch):
  path = tmp_path / "photo.jpg"
  path.write_bytes(b"\xff\xd8 not read anyway")

  def denied(*a, **kw):
    raise PermissionError(13, "Permission denied", str(path))
  monkeypatch.setattr(images, "open", denied, raising=False)
  with pytest.raises(images.ImageError, match=r"photo.jpg: cannot read file \(Permission denied\)$"):
    images.read_image(str(path))
