import numpy as np
import pytest

from jaxcap.data import flickr8k, pipeline
from jaxcap.data import vocab as V
from jaxcap.data.preprocessing import LITE, Preprocessing
from jaxcap.data.tf_setup import tf

PP = Preprocessing(24, **LITE)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  from jaxcap.data import synthetic
  d = synthetic.write(str(tmp_path_factory.mktemp("synth_pipe")), num_images=40, size=32, seed=3)
  builder = flickr8k.prepare(d, tfds_dir=str(tmp_path_factory.mktemp("tfds")), verbose=False)
  src = flickr8k.scan(d)
  vocab = V.Vocab.build([c for n in src.splits["train"] for c in src.captions[n]], min_count=1)
  return builder, src, vocab


def test_tf_tokenize_matches_python_encode():
  vocab = V.Vocab.build(["a dog runs on the grass", "two dogs play"] * 5)
  caps = ["A dog runs  on the GRASS .", "two dogs, play ; 3 times", "a cat's toy", "", "Dog-dog dog"]
  got = pipeline.tokenize(tf.constant(caps), pipeline.lookup_table(vocab), 8).numpy()
  for c, row in zip(caps, got):
    want = vocab.encode(c, max_len=8)
    assert list(row) == want + [V.PAD_ID] * (8 - len(want)), c


def test_train_batches(prepared):
  builder, src, vocab = prepared
  it = pipeline.train_batches(builder, vocab, batch_size=8, max_len=6, preprocessing=PP, seed=1)
  b = next(it)
  assert b["image"].shape == (8, 24, 24, 3) and b["image"].dtype == np.uint8
  assert b["tokens"].shape == (8, 6) and b["tokens"].dtype == np.int32
  np.testing.assert_array_equal(b["mask"], (b["tokens"] != V.PAD_ID).astype(np.float32))
  assert (b["tokens"][:, 0] == V.START_ID).all()
  all_caps = {" ".join(V.normalize(c)) for cs in src.captions.values() for c in cs}
  for row in b["tokens"]:
    text = vocab.decode(row)
    assert any(c.startswith(text) for c in all_caps), text  # a real caption (cut at max_len)
  # Same seed, same order: resumable and reproducible.
  b2 = next(pipeline.train_batches(builder, vocab, batch_size=8, max_len=6, preprocessing=PP, seed=1))
  np.testing.assert_array_equal(b["tokens"], b2["tokens"])


def test_train_normalize_and_augment(prepared):
  builder, _, vocab = prepared
  b = next(pipeline.train_batches(builder, vocab, batch_size=4, max_len=6, preprocessing=PP,
                                  normalize=True, augment=True))
  assert b["image"].dtype == np.float32 and b["image"].shape == (4, 24, 24, 3)
  assert -1.01 <= b["image"].min() and b["image"].max() <= 1.01  # (x - 127) / 128


def test_one_pair_per_caption_per_epoch(prepared):
  builder, src, vocab = prepared
  ds = pipeline.train_dataset(builder, vocab, batch_size=1, max_len=12, preprocessing=PP, repeat=False)
  n = sum(1 for _ in ds)
  assert n == sum(len(src.captions[x]) for x in src.splits["train"])


def test_process_shards_are_disjoint_and_cover(prepared):
  builder, src, vocab = prepared
  seen = []
  for i in range(2):
    ds = pipeline.train_dataset(builder, vocab, batch_size=1, max_len=12, preprocessing=PP, repeat=False,
                                process_index=i, process_count=2)
    seen.append({tuple(b["image"][0].ravel()[:64]) for b in ds.as_numpy_iterator()})
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == len(src.splits["train"])


def test_eval_batches_keep_everything_and_mark_padding(prepared):
  builder, src, _ = prepared
  batches = list(pipeline.eval_batches(builder, split="test", batch_size=4, preprocessing=PP))
  n_test = len(src.splits["test"])
  assert all(b["image"].shape == (4, 24, 24, 3) for b in batches)
  assert sum(b["valid"].sum() for b in batches) == n_test
  assert batches[-1]["valid"].sum() == n_test % 4 or n_test % 4 == 0
  names = [f.decode() for b in batches for f, ok in zip(b["filename"], b["valid"]) if ok]
  assert sorted(names) == sorted(src.splits["test"])
  refs = [r for b in batches for r in pipeline.references(b)]
  assert refs[0] == src.captions[names[0]]


def test_resize_matches_target_and_is_noop_at_size():
  img = tf.constant(np.random.default_rng(0).integers(0, 255, (24, 24, 3)), tf.uint8)
  np.testing.assert_array_equal(pipeline.resize_uint8(img, 24).numpy(), img.numpy())
  assert pipeline.resize_uint8(img, 10).shape == (10, 10, 3)
