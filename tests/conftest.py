"""Shared fixtures: small Flickr8k-style folders generated on the fly (a fresh clone has no real data), tiny
training configs and a tiny trained model. Test modules import nothing from each other or from here: they
take what they need as fixtures."""
import csv
import json
import os
import sys
import tempfile
import types

# One XLA compilation cache for the whole session, subprocesses included (set before anything imports JAX): the
# tiny runs of different tests compile identical programs (train step, greedy, encoder), and each is compiled
# once instead of once per test. A fresh directory per session keeps runs independent.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxcap-tests-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import numpy as np
import pytest

from configs import quickstart
from jaxcap.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# 12 images with captions: 6 train, 2 dev, 2 test, 1 in no split (like the real 91), 1 truncated (in train).
TRAIN = [f"img_{i:03d}.jpg" for i in range(6)] + ["img_011.jpg"]
DEV, TEST, NO_SPLIT = ["img_006.jpg", "img_007.jpg"], ["img_008.jpg", "img_009.jpg"], ["img_010.jpg"]
TRUNCATED = "img_011.jpg"
GHOST = "img_003.jpg.1"  # the real token file's quirk: captions for a name with no image file


def fixture_captions():
  rng = np.random.default_rng(1)
  caps = {}
  for name in TRAIN + DEV + TEST + NO_SPLIT:
    _, c = synthetic.make_example(rng, 32)
    # Raw-text quirks of the real files: mixed case, " ." tokens, double spaces, commas (quoted in CSV).
    caps[name] = [c[0], c[1].upper() + " .", c[2].replace(" ", "  ", 1), c[3], c[4]]
  return caps


def make_flickr_fixture(root, layout: str) -> str:
  """A tiny Flickr8k folder in `layout` ('kaggle' or 'original') with every quirk of the real files."""
  rng = np.random.default_rng(0)
  caps = fixture_captions()
  images_dir = os.path.join(root, "Images" if layout == "kaggle" else "Flicker8k_Dataset")
  text_dir = os.path.join(root, "Flickr8k_text")
  os.makedirs(images_dir)
  os.makedirs(text_dir)
  for name in caps:
    img, _ = synthetic.make_example(rng, 32)
    img.save(os.path.join(images_dir, name), quality=90)
  with open(os.path.join(images_dir, TRUNCATED), "rb+") as f:
    f.truncate(300)
  if layout == "kaggle":
    with open(os.path.join(root, "captions.txt"), "w", newline="") as f:
      w = csv.writer(f, lineterminator="\n")
      w.writerow(["image", "caption"])
      for name, cs in caps.items():
        w.writerows([name, c] for c in cs)
      f.write("img_000.jpg\n")  # malformed: no caption column
  else:
    with open(os.path.join(text_dir, "Flickr8k.token.txt"), "w") as f:
      for name, cs in caps.items():
        f.writelines(f"{name}#{k}\t{c}\n" for k, c in enumerate(cs))
      f.writelines(f"{GHOST}#{k}\tsome people waiting for the subway\n" for k in range(5))
      f.write("img_000.jpg this line has no tab\n")  # malformed
  splits = {"train": TRAIN, "dev": DEV + ["not_in_dataset.jpg"], "test": TEST}
  for split, names in splits.items():
    end = "" if split == "test" else "\n"  # real split files may lack the final newline
    with open(os.path.join(text_dir, f"Flickr_8k.{split}Images.txt"), "w") as f:
      f.write("\n".join(names) + end)
  return root


@pytest.fixture
def quirks():
  """The names and captions of the Flickr8k-style fixture folders, by role."""
  return types.SimpleNamespace(TRAIN=TRAIN, DEV=DEV, TEST=TEST, NO_SPLIT=NO_SPLIT, TRUNCATED=TRUNCATED,
                               GHOST=GHOST, captions=fixture_captions())


@pytest.fixture
def kaggle_dir(tmp_path):
  return make_flickr_fixture(str(tmp_path / "kaggle"), "kaggle")


@pytest.fixture
def original_dir(tmp_path):
  return make_flickr_fixture(str(tmp_path / "original"), "original")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
  return synthetic.write(str(tmp_path_factory.mktemp("synth")), num_images=200, size=32, seed=0)


# ---------------------------------------------------------------------------------------------------------
# Tiny training runs
# ---------------------------------------------------------------------------------------------------------
def _tiny_overrides(synth_dir, regime="finetune"):
  return {
      "data.synthetic": True, "data.synthetic_dir": synth_dir, "data.synthetic_num_images": 48,
      "data.synthetic_size": 32, "data.max_len": 12, "data.tfds_dir": os.path.join(synth_dir + "_tfds"),
      "data.feature_cache_dir": synth_dir + "_features",
      "model.image_size": 32, "model.embed_dim": 16, "model.hidden_dim": 32, "model.attention_dim": 16,
      "train.regime": regime, "train.batch_size": 8, "train.num_steps": 30, "train.log_every": 1,
      "train.eval_every": 15, "train.checkpoint_every": 10, "train.eval_batch_size": 8, "train.warmup_steps": 5,
      "train.learning_rate": 1e-2, "train.encoder_learning_rate": 1e-2,
  }


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
  """Where the tiny runs' synthetic dataset goes (generated and prepared by the first run that uses it)."""
  return str(tmp_path_factory.mktemp("train") / "synth")


@pytest.fixture(scope="session")
def tiny_config(synth):
  """tiny_config(regime, **{"section.field": value}) -> a quickstart config shrunk to seconds of training."""
  def make(regime="finetune", **extra):
    c = quickstart.get_config()
    for k, v in {**_tiny_overrides(synth, regime), **extra}.items():
      section, field = k.split(".")
      c[section][field] = v
    return c
  return make


@pytest.fixture(scope="session")
def train_cmd(synth):
  """train_cmd(workdir, {"section.field": value}) -> the `python train.py` command line of a tiny run."""
  def make(workdir, overrides):
    flags = [f"--config.{k}={v}" for k, v in {**_tiny_overrides(synth), **overrides}.items()]
    return [sys.executable, os.path.join(ROOT, "train.py"), "--workdir", workdir, *flags]
  return make


def read_metrics(workdir):
  """step -> loss (a resumed run drops the records past its checkpoint, so each step has one)."""
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    r = json.loads(line)
    if "loss" in r:
      out[r["step"]] = r["loss"]
  return out


@pytest.fixture(name="read_metrics", scope="session")
def read_metrics_fixture():
  return read_metrics


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """(workdir, config) of a tiny model trained once for the inference, CLI and app tests."""
  from jaxcap import train_lib
  base = tmp_path_factory.mktemp("inference")
  # 32x32 synthetic images, model input 24: the resize path is exercised.
  cfg = quickstart.get_config()
  for k, v in {**_tiny_overrides(str(base / "synth"), "cached"), "train.num_steps": 20,
               "model.image_size": 24}.items():
    section, field = k.split(".")
    cfg[section][field] = v
  workdir = str(base / "workdir")
  train_lib.train_and_evaluate(cfg, workdir)
  return workdir, cfg
