"""Shared fixtures: small Flickr8k-style folders generated on the fly (a fresh clone has no real data)."""
import csv
import os

import numpy as np
import pytest

from jaxcap.data import synthetic

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
def kaggle_dir(tmp_path):
  return make_flickr_fixture(str(tmp_path / "kaggle"), "kaggle")


@pytest.fixture
def original_dir(tmp_path):
  return make_flickr_fixture(str(tmp_path / "original"), "original")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
  return synthetic.write(str(tmp_path_factory.mktemp("synth")), num_images=200, size=32, seed=0)
