import json
import os

import numpy as np
import pytest

from jaxcap.data import flickr8k
from tests.conftest import DEV, GHOST, NO_SPLIT, TEST, TRAIN, TRUNCATED, fixture_captions


@pytest.mark.parametrize("layout", ["kaggle", "original"])
def test_scan_survives_every_quirk(layout, kaggle_dir, original_dir):
  src = flickr8k.scan(kaggle_dir if layout == "kaggle" else original_dir)
  assert src.layout == layout and src.split_source == "official"
  good_train = [n for n in TRAIN if n != TRUNCATED]
  assert sorted(src.splits["train"]) == sorted(good_train)
  assert sorted(src.splits["dev"]) == sorted(DEV)        # unknown name in the split file skipped
  assert sorted(src.splits["test"]) == sorted(TEST)      # split file without final newline
  assert not any(n in s for s in src.splits.values() for n in NO_SPLIT)
  skipped = dict(src.skipped)
  assert skipped[TRUNCATED].startswith("undecodable image")
  if layout == "original":
    assert skipped[GHOST] == "missing image file"          # the real `.jpg.1` quirk
  assert any("not_in_dataset.jpg" in p and "unknown image" in p for p in src.problems)
  malformed = [p for p in src.problems if "malformed captions line" in p]
  assert len(malformed) == 1 and ":" in malformed[0]
  line_no = int(malformed[0].split(":")[1])
  assert line_no == (62 if layout == "kaggle" else 66)   # the line number of the bad line
  caps = fixture_captions()
  assert all(src.captions[n] == [" ".join(c.split()) for c in caps[n]] for n in TEST)


def test_report_counts(kaggle_dir):
  report = flickr8k.scan(kaggle_dir).report()
  assert report["images"] == {"train": 6, "dev": 2, "test": 2}
  assert report["captions"] == {"train": 30, "dev": 10, "test": 10}
  assert report["skipped_images"] == 1


def test_both_layouts_give_identical_tfds_examples(kaggle_dir, original_dir, tmp_path):
  import tensorflow_datasets as tfds
  datasets = []
  for d in (kaggle_dir, original_dir):
    builder = flickr8k.prepare(d, tfds_dir=str(tmp_path / os.path.basename(d)), verbose=False)
    per_split = {}
    for split in ("train", "dev", "test"):
      examples = tfds.as_numpy(builder.as_dataset(split=split))
      per_split[split] = {ex["image/filename"].decode(): (ex["image"], [c.decode() for c in ex["captions"]])
                          for ex in examples}
    datasets.append(per_split)
  a, b = datasets
  assert a.keys() == b.keys()
  for split in a:
    assert a[split].keys() == b[split].keys() and a[split]
    for name in a[split]:
      np.testing.assert_array_equal(a[split][name][0], b[split][name][0])
      assert a[split][name][1] == b[split][name][1]
      assert a[split][name][0].shape == (32, 32, 3)


def test_prepare_writes_report_and_reuses(kaggle_dir, tmp_path):
  d = str(tmp_path / "tfds")
  b1 = flickr8k.prepare(kaggle_dir, tfds_dir=d, verbose=False)
  report = json.load(open(os.path.join(b1.data_dir, flickr8k.REPORT_FILE)))
  assert report["images"]["train"] == 6
  b2 = flickr8k.prepare(kaggle_dir, tfds_dir=d, verbose=False)
  assert b2.info.splits["train"].num_examples == 6


def test_generated_split_is_deterministic_and_sized():
  names = [f"{i}.jpg" for i in range(8091)]
  s = flickr8k.generated_split(names)
  assert [len(s[k]) for k in ("train", "dev", "test")] == [6000, 1000, 1000]
  assert s == flickr8k.generated_split(list(reversed(names)))
  assert not set(s["train"]) & set(s["test"])


def test_generated_split_used_without_split_files(synth_dir):
  src = flickr8k.scan(synth_dir)
  assert src.split_source == "generated"
  assert {k: len(v) for k, v in src.splits.items()} == {"test": 25, "dev": 25, "train": 150}


def test_clear_errors(tmp_path, capsys):
  with pytest.raises(flickr8k.DataError, match="does not exist"):
    flickr8k.scan(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(flickr8k.DataError, match="no Flickr8k layout found"):
    flickr8k.scan(str(tmp_path / "empty"))
  k = tmp_path / "k"
  (k / "Images").mkdir(parents=True)
  (k / "captions.txt").write_text("\n")
  with pytest.raises(flickr8k.DataError, match=r"captions.txt: captions file is empty"):
    flickr8k.scan(str(k))
  assert flickr8k.main(["--data_dir", str(tmp_path / "nope")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "nope: data directory does not exist" in err


def test_stats_command(kaggle_dir, capsys):
  assert flickr8k.main(["--data_dir", kaggle_dir, "--json", "--min_count", "1"]) == 0
  stats = json.loads(capsys.readouterr().out)
  assert stats["images"] == {"train": 6, "dev": 2, "test": 2}
  assert stats["vocab_size"] > 10
  assert stats["train_caption_length_tokens"]["p50"] >= 6
