"""Datasets beyond Flickr8k: Karpathy JSONs (generated fixtures), a TFDS captioning dataset through the adapter
(`tfds.testing.mock_data`, no download), the `data.dataset` dispatch, stats, training, evaluation, app samples."""
import contextlib
import dataclasses
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxcap.data import DataError, dataset, flickr8k, karpathy, stats, synthetic, tfds_adapter, tfds_builder
from jaxcap.data.vocab import Vocab


def _write(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f)
  return str(path)


# ---------------------------------------------------------------------------------------------------------
# Karpathy JSON
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def flickr8k_json(kaggle_dir, tmp_path):
  """A dataset_flickr8k.json made from the Kaggle fixture's official split, as Karpathy's file would be."""
  return _write(tmp_path / "dataset_flickr8k.json", karpathy.from_source(flickr8k.scan(kaggle_dir)))


def test_karpathy_json_gives_the_official_split_and_captions(kaggle_dir, flickr8k_json, tmp_path):
  a = flickr8k.scan(kaggle_dir)
  b = karpathy.scan(os.path.join(kaggle_dir, "Images"), flickr8k_json)
  assert b.layout == "karpathy" and b.splits == a.splits and not b.skipped and not b.problems
  assert all(b.captions[n] == a.captions[n] for s in a.splits.values() for n in s)
  # Prepared, both give identical TFDS examples in the same order: same vocabulary, same training data.
  fb = tfds_builder.prepare(kaggle_dir, tfds_dir=str(tmp_path / "f"), verbose=False)
  kb = tfds_builder.prepare_karpathy(os.path.join(kaggle_dir, "Images"), flickr8k_json, tfds_dir=str(tmp_path / "k"),
                                     verbose=False)
  assert kb.name == "karpathy_captions" and fb.name == "flickr8k"
  for split in ("train", "dev", "test"):
    assert tfds_builder.split_captions(kb, split) == tfds_builder.split_captions(fb, split)
    for x, y in zip(tfds.as_numpy(fb.as_dataset(split=split)), tfds.as_numpy(kb.as_dataset(split=split))):
      np.testing.assert_array_equal(x["image"], y["image"])
  train = tfds_builder.split_captions(kb, "train")
  assert Vocab.build(c for cs in train[1].values() for c in cs) == Vocab.build(
      c for n in a.splits["train"] for c in a.captions[n])


@pytest.fixture
def coco_like(tmp_path):
  """COCO-style folder: train2014/ and val2014/ subfolders and a dataset_coco.json with every quirk."""
  root = tmp_path / "coco"
  rng = np.random.default_rng(0)
  entries = []

  def add(folder, i, split, write=True, caption=None):
    name = f"COCO_{folder}_{i:012d}.jpg"
    img, caps = synthetic.make_example(rng, 32)
    if write:
      os.makedirs(root / folder, exist_ok=True)
      img.save(root / folder / name)
    entries.append({"filepath": folder, "filename": name, "split": split, "cocoid": i,
                    "sentences": [{"raw": caption or c, "tokens": c.split()} for c in caps]})

  for i in range(4):
    add("train2014", i, "train")
  add("val2014", 10, "restval")
  add("val2014", 11, "val")
  add("val2014", 12, "val")
  add("val2014", 13, "test")
  add("val2014", 14, "test", caption="  A  Caption   with spaces .")
  add("train2014", 5, "train", write=False)                          # missing image
  add("train2014", 6, "train")
  with open(root / "train2014" / entries[-1]["filename"], "rb+") as f:  # truncated image
    f.truncate(200)
  entries.append("not an entry")                                       # malformed: index 11
  entries.append({"filename": "x.jpg", "split": "train"})              # no sentences: index 12
  add("val2014", 20, "extra")                                          # unknown split: index 13
  entries.append(dict(entries[0]))                                     # listed twice: index 14
  path = _write(root / "dataset_coco.json", {"images": entries, "dataset": "coco"})
  return str(root), path


def test_karpathy_quirks_are_reported_and_skipped(coco_like):
  root, path = coco_like
  src = karpathy.scan(root)  # finds the one dataset_*.json in the folder
  assert src.captions_file == path
  assert src.splits["train"] == [f"train2014/COCO_train2014_{i:012d}.jpg" for i in range(4)] + [
      "val2014/COCO_val2014_000000000010.jpg"]                          # restval joins train
  assert src.splits["dev"] == [f"val2014/COCO_val2014_{i:012d}.jpg" for i in (11, 12)]
  assert len(src.splits["test"]) == 2 and "restval (1 images) in train" in src.split_source
  assert src.captions["val2014/COCO_val2014_000000000014.jpg"][0] == "A Caption with spaces ."
  skipped = dict(src.skipped)
  assert skipped["train2014/COCO_train2014_000000000005.jpg"] == "missing image file"
  assert skipped["train2014/COCO_train2014_000000000006.jpg"].startswith("undecodable image")
  problems = "\n".join(src.problems)
  assert "dataset_coco.json: images[11]: malformed entry skipped" in problems
  assert "images[12]: malformed entry skipped (x.jpg: no 'sentences' list)" in problems
  assert "images[13]: unknown split 'extra'" in problems
  assert "images[14]: train2014/COCO_train2014_000000000000.jpg listed again" in problems
  report = src.report()
  assert report["images"] == {"train": 5, "dev": 2, "test": 2} and report["skipped_images"] == 2
  without = karpathy.scan(root, path, use_restval=False)
  assert without.splits["train"] == src.splits["train"][:4] and "restval (1 images) unused" in without.split_source


@pytest.mark.parametrize("content, message", [
    ({"dataset": "coco"}, "not a Karpathy caption_datasets JSON: expected an object with an 'images' list, "
                          "found ['dataset']"),
    ([1, 2], "not a Karpathy caption_datasets JSON"),
    ("{not json", "not a JSON file (JSONDecodeError"),
])
def test_karpathy_json_not_in_this_format_is_one_line(tmp_path, content, message):
  path = tmp_path / "dataset_x.json"
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  with pytest.raises(DataError) as e:
    karpathy.scan(str(tmp_path), str(path))
  assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)


def test_data_dataset_names_are_checked(kaggle_dir):
  import ml_collections
  with pytest.raises(DataError, match=r"data.dataset='coco': expected one of flickr8k, karpathy, tfds:<name>"):
    dataset.prepare(ml_collections.ConfigDict({"dataset": "coco", "data_dir": kaggle_dir}))
  with pytest.raises(DataError, match="set data.karpathy_json"):  # no dataset_*.json in the folder
    dataset.prepare(ml_collections.ConfigDict({"dataset": "karpathy", "data_dir": kaggle_dir, "synthetic": False}))


# ---------------------------------------------------------------------------------------------------------
# A TFDS captioning dataset: coco_captions, mocked (as_dataset_fn gives examples in its real feature form)
# ---------------------------------------------------------------------------------------------------------
FAKE_SPLITS = {"train": 6, "restval": 2, "val": 2, "test": 2}


def _fake_examples(split_name):
  rng = np.random.default_rng(sorted(FAKE_SPLITS).index(split_name))
  for i in range(FAKE_SPLITS[split_name]):
    img, caps = synthetic.make_example(rng, 32)
    image_id = 1000 * sorted(FAKE_SPLITS).index(split_name) + i
    yield {"image": np.asarray(img), "image/filename": f"COCO_{split_name}_{image_id:012d}.jpg", "image/id": image_id,
           "objects": {"area": [], "bbox": np.zeros((0, 4), np.float32), "id": [], "is_crowd": [], "label": []},
           "captions": [{"id": 10 * image_id + k, "text": c} for k, c in enumerate(caps)]}


def _fake_coco_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """coco_captions examples for a split ("a+b", or tfds.even_splits' object), encoded then decoded as TFDS does."""
  import tensorflow as tf
  even = None
  if not isinstance(split, str):
    even, split = split, split.split
  examples = [ex for name in split.split("+") for ex in _fake_examples(name)]
  if even is not None:
    examples = examples[even.index::even.count]
  features = self.info.features

  def encoded():
    for ex in examples:  # numpy object scalars (encoded text) -> plain bytes for from_generator
      yield tf.nest.map_structure(
          lambda v: v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v, features.encode_example(ex))

  spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.tf_dtype), features.get_serialized_info())
  ds = tf.data.Dataset.from_generator(encoded, output_signature=spec)
  ds = ds.apply(tf.data.experimental.assert_cardinality(len(examples)))
  return ds.map(lambda ex: features.decode_example(ex, decoders=decoders))


@pytest.fixture
def mock_coco():
  """Mocks TFDS (every builder made inside, jaxcap's own too: use it around tfds:<name> work only)."""
  return lambda: tfds.testing.mock_data(as_dataset_fn=_fake_coco_as_dataset)


def test_tfds_adapter_maps_coco_captions_splits_and_features(mock_coco):
  with mock_coco():
    _check_coco_adapter()


def _check_coco_adapter():
  b = tfds_adapter.TfdsCaptions("coco_captions", verbose=False)
  assert b.split_map == {"train": ["train", "restval"], "dev": ["val"], "test": ["test"]}
  assert {s: v.num_examples for s, v in b.info.splits.items()} == {"train": 8, "dev": 2, "test": 2}
  assert b.cache_id == b.data_dir + "+restval"
  names, caps = tfds_builder.split_captions(b, "train")
  assert sorted(names) == sorted(ex["image/filename"] for n in ("train", "restval") for ex in _fake_examples(n))
  first = next(_fake_examples("train"))
  assert caps[first["image/filename"]] == [c["text"] for c in first["captions"]]
  ex = next(iter(tfds.as_numpy(b.as_dataset(split="dev"))))
  assert set(ex) == {"image", "image/filename", "captions"} and ex["image"].shape == (32, 32, 3)
  assert b.tfds_split(tfds.split_for_jax_process("train", process_index=1, process_count=2)).split == "train+restval"
  assert b.tfds_split("dev[:1]") == "val[:1]"
  with pytest.raises(DataError, match="slicing 'train\\[:10\\]' over train\\+restval is not supported"):
    b.tfds_split("train[:10]")
  only_train = tfds_adapter.TfdsCaptions("coco_captions", use_restval=False, verbose=False)
  assert only_train.info.splits["train"].num_examples == 6 and only_train.cache_id == only_train.data_dir


def test_tfds_name_that_does_not_exist_is_one_line():
  import ml_collections
  with pytest.raises(DataError) as e:
    dataset.prepare(ml_collections.ConfigDict({"dataset": "tfds:no_such_captions"}))
  assert str(e.value).startswith("tfds:no_such_captions: no TFDS dataset of that name") and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------------
# Every command on each kind: stats, training (cached), evaluation, the app's sample photos
# ---------------------------------------------------------------------------------------------------------
def test_stats_command_for_karpathy_and_tfds(coco_like, mock_coco, tmp_path, capsys):
  root, path = coco_like
  assert stats.main(["--dataset", "karpathy", "--data_dir", root, "--json", "--min_count", "1", "--prepare",
                     "--tfds_dir", str(tmp_path / "k")]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["images"] == {"train": 5, "dev": 2, "test": 2} and out["skipped_images"] == 2
  assert out["first_batches"]["train"]["image"] == [8, 224, 224, 3]
  with mock_coco():
    assert stats.main(["--dataset", "tfds:coco_captions", "--min_count", "1"]) == 0
  text = capsys.readouterr().out
  assert "layout: tfds:coco_captions" in text and "train+restval -> train" in text
  assert "train:      8 images      40 captions" in text
  assert stats.main(["--dataset", "karpathy"]) == 2
  assert "--data_dir is required" in capsys.readouterr().err


@pytest.fixture
def kinds(coco_like, tmp_path):
  root, path = coco_like
  return {"karpathy": {"data.dataset": "karpathy", "data.data_dir": root, "data.karpathy_json": path,
                       "data.tfds_dir": str(tmp_path / "prepared")},
          "tfds": {"data.dataset": "tfds:coco_captions", "data.tfds_dir": ""}}


# Trains on each dataset kind end to end: slow tier.
@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) for k in ("karpathy", "tfds")])
def test_train_evaluate_and_samples_on_each_kind(kind, kinds, mock_coco, tiny_config, tmp_path, capsys):
  from jaxcap import evaluate, train_lib
  # The tiny config's synthetic fields back at their unused values: a run that reads a dataset ignores them.
  cfg = tiny_config("cached", **{"data.synthetic": False, "data.synthetic_dir": "", "data.synthetic_num_images": 2000,
                                 "data.synthetic_size": 64, "train.num_steps": 4, "train.eval_every": 0,
                                 "train.checkpoint_every": 0, "data.feature_cache_dir": str(tmp_path / "features"),
                                 **kinds[kind]})
  with mock_coco() if kind == "tfds" else contextlib.nullcontext():
    result = train_lib.train_and_evaluate(cfg, str(tmp_path / "w"))
    assert evaluate.main(["--checkpoint", str(tmp_path / "w"), "--split", "test", "--beam", "1", "--no_meteor",
                          "--batch_size", "8"]) == 0  # the shapes the trainer compiled
    samples = dataset.sample_images(cfg.data, 2)
  assert result["step"] == 4 and result["dev_images"] == 2 and result["test_images"] == 2
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 2
  assert len(samples) == 2 and all(Image.open(io.BytesIO(b)).size == (32, 32) for _, b in samples)


def test_old_checkpoint_configs_read_as_flickr8k(kaggle_dir):
  import ml_collections

  from jaxcap import checkpoint
  saved = {"data": {"data_dir": kaggle_dir, "synthetic": False, "tfds_dir": ""}}
  full = checkpoint.with_added_fields(saved)
  assert full["data"]["dataset"] == "flickr8k" and full["data"]["use_restval"] is True
  assert dataset.spec(ml_collections.ConfigDict(saved["data"])) == dataset.spec(ml_collections.ConfigDict(full["data"]))
  assert dataclasses.asdict(dataset.spec(ml_collections.ConfigDict(full["data"])))["kind"] == "flickr8k"
  assert [n for n, _ in dataset.sample_images(ml_collections.ConfigDict(saved["data"]), 2)] == \
      flickr8k.scan(kaggle_dir, check_images=False).splits["test"][:2]
  shutil.rmtree(os.path.join(kaggle_dir, "Images"))
  assert dataset.sample_images(ml_collections.ConfigDict(saved["data"]), 2) == []  # not on this machine


@pytest.mark.parametrize("name, kind", [("coco_lite0", "tfds"), ("flickr30k_lite0", "karpathy"),
                                        ("flickr8k_lite0", "flickr8k")])
def test_dataset_recipes_name_their_dataset(name, kind):
  import importlib
  cfg = importlib.import_module(f"configs.{name}").get_config()
  assert dataset.spec(cfg.data).kind == kind
  if kind != "flickr8k":
    assert "accelerator" in importlib.import_module(f"configs.{name}").__doc__
    assert cfg.model.dtype == "bfloat16" and cfg.train.regime == "cached"
