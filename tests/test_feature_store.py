"""The on-disk feature store: rows read on demand, the memory-or-stream choice, identical batches either way."""
import os

import ml_collections
import numpy as np
import pytest

from jaxcap import feature_cache, train_lib, train_state
from jaxcap.feeds import rows as feed_rows
from jaxcap.data import batching


@pytest.fixture
def grids(tmp_path):
  """(array, path of the same array written batch by batch through RowWriter)."""
  a = np.random.default_rng(0).normal(size=(37, 2, 3, 5)).astype(np.float16)
  path = str(tmp_path / "train.npy")
  w = feature_cache.RowWriter(path, len(a), a.shape[1:])
  for i in range(0, len(a), 8):
    w.write(a[i:i + 8])
  w.close()
  return a, path


def test_rows_are_the_npy_file_read_on_demand(grids):
  a, path = grids
  np.testing.assert_array_equal(np.load(path), a)  # a plain .npy
  rows = feature_cache.FeatureRows(path)
  assert rows.shape == a.shape and len(rows) == 37 and rows.nbytes == a.nbytes and rows.dtype == np.float16
  idx = np.array([5, 3, 3, 36, 0, 4, 6, -1])  # any order, duplicates, negative
  np.testing.assert_array_equal(rows[idx], a[idx])
  np.testing.assert_array_equal(rows[7], a[7])
  view = rows[2:9]  # a view: nothing read
  assert isinstance(view, feature_cache.FeatureRows) and view.shape == (7, 2, 3, 5)
  np.testing.assert_array_equal(np.asarray(view), a[2:9])
  np.testing.assert_array_equal(view[[6, 0]], a[2:9][[6, 0]])
  np.testing.assert_array_equal(rows[30:100].load(), a[30:])
  np.testing.assert_array_equal(rows[::3], a[::3])
  with pytest.raises(IndexError):
    rows[[37]]
  rng = np.random.default_rng(0)
  for _ in range(50):  # random batches: repeats, runs of consecutive rows, any order
    idx = rng.integers(0, 37, rng.integers(1, 40))
    if rng.random() < 0.3:
      idx = np.sort(idx)
    np.testing.assert_array_equal(rows[idx], a[idx])
    np.testing.assert_array_equal(view[idx % 7], a[2:9][idx % 7])


def test_row_writer_refuses_a_wrong_count(tmp_path):
  w = feature_cache.RowWriter(str(tmp_path / "x.npy"), 4, (2,))
  w.write(np.zeros((3, 2)))
  with pytest.raises(ValueError, match="do not fit"):
    w.write(np.zeros((2, 2)))
  with pytest.raises(ValueError, match="3 rows written, 4 expected"):
    w.close()


def _config(store="auto", gb=0.0):
  c = ml_collections.ConfigDict({"train": {"feature_store": store, "feature_memory_gb": gb}})
  return c


@pytest.mark.parametrize("store, gb, expect", [("auto", 1.0, "memory"), ("auto", 1e-6, "stream"),
                                               ("stream", 1.0, "stream"), ("memory", 1e-6, "memory"),
                                               ("auto", 0.0, "memory")])
def test_store_choice_is_automatic_and_logged_with_sizes(grids, store, gb, expect):
  _, path = grids
  lines = []
  out = feed_rows.feature_store(_config(store, gb), {"train": feature_cache.FeatureRows(path),
                                                 "dev": feature_cache.FeatureRows(path)[:5]}, lines.append)
  kind = np.ndarray if expect == "memory" else feature_cache.FeatureRows
  assert all(type(v) is kind for v in out.values())
  [line] = lines
  assert line.startswith("feature store: " + ("host memory" if expect == "memory" else "streamed from disk"))
  assert "train 0.00 GB (37 grids) + dev 0.00 GB (5 grids)" in line and "budget" in line


def test_bad_store_name_is_one_line(grids):
  with pytest.raises(train_state.TrainError, match="train.feature_store must be auto, memory or stream, got 'disk'"):
    feed_rows.feature_store(_config("disk"), {"train": feature_cache.FeatureRows(grids[1])})


def test_streamed_batches_equal_in_memory_batches_and_resume_exactly(grids):
  a, path = grids
  rng = np.random.default_rng(1)
  pairs = batching.CaptionPairs(np.repeat(np.arange(37), 5).astype(np.int32),
                                rng.integers(1, 9, (185, 12)).astype(np.int32), rng.integers(3, 12, 185).astype(np.int32))
  schedule = batching.Schedule(pairs.lengths, 16, seed=0)
  rows = feature_cache.FeatureRows(path)
  whole = list(feed_rows.grid_batches(a, pairs, schedule, 12, 0, 30))
  streamed = list(feed_rows.grid_batches(rows, pairs, schedule, 12, 0, 30))
  resumed = list(feed_rows.grid_batches(rows, pairs, schedule, 12, 17, 30))
  for x, y in zip(whole, streamed):
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
  for x, y in zip(whole[17:], resumed):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  # Two processes read disjoint halves of each batch (only their rows), together the whole batch.
  halves = [list(feed_rows.grid_batches(rows, pairs, schedule, 12, 0, 3, p, 2)) for p in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(np.concatenate([h[step]["grid"] for h in halves]), whole[step]["grid"])


@pytest.mark.slow
def test_training_on_the_streamed_store_equals_training_in_memory(tiny_config, read_metrics, tmp_path, capsys):
  results = {}
  for store in ("memory", "stream"):
    cfg = tiny_config("cached", **{"train.num_steps": 6, "train.eval_every": 0, "train.checkpoint_every": 0,
                                   "train.feature_store": store})
    results[store] = train_lib.train_and_evaluate(cfg, str(tmp_path / store)), read_metrics(str(tmp_path / store))
  assert "feature store: streamed from disk" in capsys.readouterr().err
  (m, m_losses), (s, s_losses) = results["memory"], results["stream"]
  assert m_losses == s_losses and len(m_losses) == 6
  assert m["dev_bleu4"] == s["dev_bleu4"] and m["test_bleu4"] == s["test_bleu4"]
  assert os.path.exists(os.path.join(str(tmp_path / "stream"), "vocab.json"))


@pytest.mark.slow
def test_two_writers_sharing_a_cache_encode_a_split_once_and_the_second_reads_the_first(synth_dir, tmp_path,
                                                                                        capsys):
  import threading
  import time

  import jax

  from jaxcap.data import tfds_builder
  from jaxcap.models import encoders

  builder = tfds_builder.prepare(synth_dir, str(tmp_path / "tfds"), verbose=False)
  enc = encoders.make_encoder("small_cnn", image_size=32)
  variables = enc.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.uint8))

  class Counted:
    """The real encoder, counting its traces; the first writer's first trace takes a second, so the second
    writer arrives while the first one holds the split."""
    def __init__(self, delay):
      self.delay, self.traces, self.preprocessing = delay, 0, enc.preprocessing

    def apply(self, v, x):
      self.traces += 1
      time.sleep(self.delay)
      return enc.apply(v, x)

  first, second, out = Counted(1.0), Counted(0.0), {}
  directory = str(tmp_path / "features")

  def run(name, encoder):
    out[name] = feature_cache.extract(builder, "train", encoder, variables, directory, 8)

  a = threading.Thread(target=run, args=("first", first))
  a.start()
  time.sleep(0.5)
  run("second", second)
  a.join()
  assert first.traces > 0 and second.traces == 0  # the second writer encoded nothing
  assert "waiting for another process writing the features of train" in capsys.readouterr().err
  assert out["first"][0] == out["second"][0]
  np.testing.assert_array_equal(out["first"][1].load(), out["second"][1].load())
  assert sorted(os.listdir(directory)) == ["train.json", "train.npy"]  # no second copy, nothing temporary


def test_cache_key_covers_what_changes_the_features(tmp_path):
  """bf16 and f32 runs, or the two depthwise kernels, never share cached grids (each computes other bits)."""
  import types

  from configs import flickr8k_lite0
  from jaxcap import feature_cache

  builder = types.SimpleNamespace(data_dir=str(tmp_path))

  def folder(**model):
    c = flickr8k_lite0.get_config()
    c.model.pretrained = ""
    c.model.update(model)
    return feature_cache.directory_for(c, builder, 224)

  base = folder()
  assert folder() == base
  assert folder(dtype="bfloat16") != base
  assert folder(depthwise_impl="conv") != folder(depthwise_impl="shifted")
