"""Captioner and the CLIs on a tiny model trained in the fixture."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxcap import evaluate, train_lib
from jaxcap.checkpoint import CheckpointError
from jaxcap.data import pipeline, tfds_builder
from jaxcap.inference import Captioner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_captioner_loads_a_workdir_and_captions_files(trained):
  workdir, cfg = trained
  cap = Captioner.load(workdir)
  img = os.path.join(cfg.data.synthetic_dir, "Images", "synth_00000.jpg")
  [greedy] = cap.caption([img])
  [beam] = cap.caption([img], beam_size=3)
  assert isinstance(greedy.caption, str) and len(beam.beams) == 3
  assert beam.attention.shape[1:] == (3, 3) and beam.attention.shape[0] == len(beam.words)
  np.testing.assert_allclose(beam.attention.sum((1, 2)), 1.0, atol=1e-5)
  assert [b.score for b in beam.beams] == sorted((b.score for b in beam.beams), reverse=True)


def test_captioner_feeds_the_encoder_the_training_pixels(trained):
  workdir, cfg = trained
  cap = Captioner.load(workdir)
  builder = tfds_builder.prepare(cfg.data.synthetic_dir, cfg.data.tfds_dir, verbose=False)
  batch = next(pipeline.eval_batches(builder, split="test", batch_size=4, preprocessing=cap.preprocessing))
  for name, pixels in zip(batch["filename"], batch["image"]):
    path = os.path.join(cfg.data.synthetic_dir, "Images", name.decode())
    np.testing.assert_array_equal(cap.preprocess(path), pixels)
  assert batch["image"].shape[1:] == (24, 24, 3)


def test_missing_checkpoint_is_one_clear_error(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist"):
    Captioner.load(str(tmp_path / "none"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="no jaxcap checkpoint found"):
    Captioner.load(str(tmp_path / "empty"))


@pytest.mark.slow
def test_caption_cli_gives_every_input_a_record_and_fails_on_bad_files(trained, tmp_path):
  workdir, cfg = trained
  folder = tmp_path / "site" / "nested"
  folder.mkdir(parents=True)
  src = os.path.join(cfg.data.synthetic_dir, "Images")
  for n in ("synth_00001.jpg", "synth_00002.jpg"):
    (folder / n).write_bytes(open(os.path.join(src, n), "rb").read())
  (folder / "empty.jpg").write_bytes(b"")
  (folder / "fake.png").write_bytes(b"not really a png")
  out = subprocess.run([sys.executable, "-m", "jaxcap.caption", "--checkpoint", workdir, "--format", "jsonl",
                        "--beam", "2", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 1, out.stderr
  records = {os.path.basename(r["path"]): r for r in map(json.loads, out.stdout.splitlines())}
  assert set(records) == {"synth_00001.jpg", "synth_00002.jpg", "empty.jpg", "fake.png"}
  assert isinstance(records["synth_00001.jpg"]["caption"], str)
  assert "empty file" in records["empty.jpg"]["error"] and "not an image" in records["fake.png"]["error"]
  ok = subprocess.run([sys.executable, "-m", "jaxcap.caption", "--checkpoint", workdir, "--format", "csv",
                       str(folder / "synth_00001.jpg")], capture_output=True, text=True, cwd=ROOT)
  assert ok.returncode == 0 and ok.stdout.splitlines()[0] == "path,caption,error"


@pytest.mark.slow
def test_evaluate_cli_prints_metrics_and_writes_predictions(trained, tmp_path):
  workdir, _ = trained
  out = tmp_path / "pred.jsonl"
  res = subprocess.run([sys.executable, "-m", "jaxcap.evaluate", "--checkpoint", workdir, "--split", "test",
                        "--beam", "2", "--no_meteor", "--batch_size", "4", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
  assert res.returncode == 0, res.stderr
  summary = json.loads(res.stdout.strip().splitlines()[-1])
  assert summary["images"] == 6 and summary["beam"] == 2
  assert 0 <= summary["bleu4"] <= 1 and summary["cider"] >= 0 and summary["meteor"] is None
  rows = [json.loads(l) for l in open(out)]
  assert len(rows) == 6 and {"image", "caption", "beams", "references", "bleu4"} <= set(rows[0])


@pytest.mark.parametrize("regime", [pytest.param(r, marks=pytest.mark.slow) for r in ("finetune", "cached")])
def test_trainer_dev_bleu_equals_evaluate_on_the_same_checkpoint(regime, tiny_config, tmp_path, capsys):
  cfg = tiny_config(regime, **{"train.num_steps": 20, "train.eval_every": 10, "train.final_test_eval": False})
  workdir = str(tmp_path / "w")
  train_lib.train_and_evaluate(cfg, workdir)
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  best = max((r for r in records if "dev_bleu4" in r), key=lambda r: r["dev_bleu4"])  # what best/ holds
  assert evaluate.main(["--checkpoint", workdir, "--split", "dev", "--beam", "1", "--no_meteor",
                        "--max_len", str(cfg.train.decode_max_len), "--batch_size", str(cfg.train.eval_batch_size),
                        "--out", str(tmp_path / "dev.jsonl")]) == 0
  cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert cli["checkpoint"].endswith(f"checkpoints/{best['step']}")
  assert cli["images"] == best["dev_images"]
  assert [cli[f"bleu{n}"] for n in range(1, 5)] == [best[f"dev_bleu{n}"] for n in range(1, 5)]
  assert json.loads(open(tmp_path / "dev.jsonl").readline())["caption"] == best["dev_example"]
