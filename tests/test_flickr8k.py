"""Flickr8k folders in both layouts with every quirk of the real files, TFDS preparation, generated splits, the stats command."""

import json
import os

import numpy as np
import pytest

from jaxcap.data import DataError, flickr8k, stats, tfds_builder


@pytest.mark.parametrize("layout", ["kaggle", "original"])
def test_scan_survives_every_quirk(layout, kaggle_dir, original_dir, quirks):
  src = flickr8k.scan(kaggle_dir if layout == "kaggle" else original_dir)
  assert src.layout == layout and src.split_source == "official"
  good_train = [n for n in quirks.TRAIN if n != quirks.TRUNCATED]
  assert sorted(src.splits["train"]) == sorted(good_train)
  assert sorted(src.splits["dev"]) == sorted(quirks.DEV)        # unknown name in the split file skipped
  assert sorted(src.splits["test"]) == sorted(quirks.TEST)      # split file without final newline
  assert not any(n in s for s in src.splits.values() for n in quirks.NO_SPLIT)
  skipped = dict(src.skipped)
  assert skipped[quirks.TRUNCATED].startswith("undecodable image")
  if layout == "original":
    assert skipped[quirks.GHOST] == "missing image file"          # the real `.jpg.1` quirk
  assert any("not_in_dataset.jpg" in p and "unknown image" in p for p in src.problems)
  malformed = [p for p in src.problems if "malformed captions line" in p]
  assert len(malformed) == 1 and ":" in malformed[0]
  line_no = int(malformed[0].split(":")[1])
  assert line_no == (62 if layout == "kaggle" else 66)   # the line number of the bad line
  caps = quirks.captions
  assert all(src.captions[n] == [" ".join(c.split()) for c in caps[n]] for n in quirks.TEST)


def test_report_counts(kaggle_dir):
  report = flickr8k.scan(kaggle_dir).report()
  assert report["images"] == {"train": 6, "dev": 2, "test": 2}
  assert report["captions"] == {"train": 30, "dev": 10, "test": 10}
  assert report["skipped_images"] == 1


def test_both_layouts_give_identical_tfds_examples(kaggle_dir, original_dir, tmp_path):
  import tensorflow_datasets as tfds
  datasets = []
  for d in (kaggle_dir, original_dir):
    builder = tfds_builder.prepare(d, tfds_dir=str(tmp_path / os.path.basename(d)), verbose=False)
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


def _files(root):
  """path -> (inode, mtime_ns, size) of every file under root."""
  out = {}
  for dirpath, _, names in os.walk(root):
    for n in names:
      st = os.stat(os.path.join(dirpath, n))
      out[os.path.join(dirpath, n)] = (st.st_ino, st.st_mtime_ns, st.st_size)
  return out


def test_prepare_writes_report_and_reuses(kaggle_dir, tmp_path, capsys, quirks):
  d = str(tmp_path / "tfds")
  b1 = tfds_builder.prepare(kaggle_dir, tfds_dir=d, verbose=False)
  report = json.load(open(os.path.join(b1.data_dir, tfds_builder.REPORT_FILE)))
  assert report["images"]["train"] == 6
  before = _files(d)
  assert any(".tfrecord" in p for p in before) and os.path.join(b1.data_dir, tfds_builder.REPORT_FILE) in before
  capsys.readouterr()
  b2 = tfds_builder.prepare(kaggle_dir, tfds_dir=d, verbose=True)
  assert b2.data_dir == b1.data_dir and b2.info.splits["train"].num_examples == 6
  assert _files(d) == before  # nothing written again: same files, inodes, mtimes and sizes
  assert "Preparing" not in capsys.readouterr().err
  names, caps = tfds_builder.split_captions(b2, "test")
  assert sorted(names) == sorted(quirks.TEST) and all(len(caps[n]) == 5 for n in names)


def test_default_tfds_dir_under_cache_root(monkeypatch, tmp_path):
  from jaxcap import paths
  monkeypatch.delenv("JAXCAP_TFDS_DIR", raising=False)
  d = tfds_builder.default_tfds_dir(str(tmp_path / "flickr8k"))
  assert d.startswith(os.path.join(paths.cache_root(), "tfds", "flickr8k-"))
  monkeypatch.setenv("JAXCAP_TFDS_DIR", str(tmp_path / "elsewhere"))
  assert tfds_builder.default_tfds_dir(str(tmp_path / "flickr8k")).startswith(str(tmp_path / "elsewhere"))


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
  with pytest.raises(DataError, match="does not exist"):
    flickr8k.scan(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no Flickr8k layout found"):
    flickr8k.scan(str(tmp_path / "empty"))
  k = tmp_path / "k"
  (k / "Images").mkdir(parents=True)
  (k / "captions.txt").write_text("\n")
  with pytest.raises(DataError, match=r"captions.txt: captions file is empty"):
    flickr8k.scan(str(k))
  assert stats.main(["--data_dir", str(tmp_path / "nope")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "nope: data directory does not exist" in err


def test_stats_command(kaggle_dir, capsys):
  assert stats.main(["--data_dir", kaggle_dir, "--json", "--min_count", "1"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["images"] == {"train": 6, "dev": 2, "test": 2}
  assert out["vocab_size"] > 10
  assert out["train_caption_length_tokens"]["p50"] >= 6


def test_stats_command_prepare_reads_batches_back(kaggle_dir, tmp_path, capsys):
  d = str(tmp_path / "tfds")
  assert stats.main(["--data_dir", kaggle_dir, "--prepare", "--tfds_dir", d, "--json", "--min_count", "1"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # TFDS prints its own progress first
  assert out["tfds_dir"].startswith(d)
  assert out["first_batches"]["train"]["image"] == [8, 224, 224, 3]
  assert out["first_batches"]["eval"]["image"] == [8, 224, 224, 3] and out["first_batches"]["eval"]["valid"] == [8]
