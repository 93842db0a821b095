"""tf.data pipelines: tokenization equal to Python's, train and eval batches, process shards, augmentation, resizing."""

import numpy as np
import pytest

from jaxcap.data import flickr8k, pipeline, tfds_builder
from jaxcap.data import vocab as V
from jaxcap.data.preprocessing import Preprocessing
from jaxcap.data.tf_setup import tf

PP = Preprocessing(24, (0.0,) * 3, (1.0,) * 3)  # the pipeline only resizes; mean/std are the encoder's business


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  from jaxcap.data import synthetic
  d = synthetic.write(str(tmp_path_factory.mktemp("synth_pipe")), num_images=40, size=32, seed=3)
  builder = tfds_builder.prepare(d, tfds_dir=str(tmp_path_factory.mktemp("tfds")), verbose=False)
  src = flickr8k.scan(d)
  vocab = V.Vocab.build([c for n in src.splits["train"] for c in src.captions[n]], min_count=1)
  return builder, src, vocab


def test_tf_tokenize_matches_python_to_ids():
  vocab = V.Vocab.build(["a dog runs on the grass", "two dogs play"] * 5)
  caps = ["A dog runs  on the GRASS .", "two dogs, play ; 3 times", "a cat's toy", "", "Dog-dog dog"]
  got = pipeline.tokenize(tf.constant(caps), pipeline.lookup_table(vocab), 8).numpy()
  for c, row in zip(caps, got):
    want = vocab.to_ids(c, max_len=8)
    assert list(row) == want + [V.PAD_ID] * (8 - len(want)), c


@pytest.mark.slow
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
    text = vocab.to_text(row)
    assert any(c.startswith(text) for c in all_caps), text  # a real caption (cut at max_len)
  # Same seed, same order: resumable and reproducible.
  b2 = next(pipeline.train_batches(builder, vocab, batch_size=8, max_len=6, preprocessing=PP, seed=1))
  np.testing.assert_array_equal(b["tokens"], b2["tokens"])


@pytest.mark.slow
def test_train_augment_changes_pixels_of_the_same_examples(prepared):
  builder, _, vocab = prepared

  def batch(augment):
    return next(pipeline.train_batches(builder, vocab, batch_size=8, max_len=6, preprocessing=PP, seed=2,
                                       augment=augment))

  plain, plain_again, aug = batch(False), batch(False), batch(True)
  np.testing.assert_array_equal(plain["image"], plain_again["image"])  # without augment: deterministic
  np.testing.assert_array_equal(aug["tokens"], plain["tokens"])         # same seed: the same examples
  assert aug["image"].dtype == np.uint8 and aug["image"].shape == (8, 24, 24, 3)
  assert (aug["image"].max(axis=(1, 2, 3)) > aug["image"].min(axis=(1, 2, 3))).all()  # still real images
  diff = np.abs(aug["image"].astype(np.int32) - plain["image"].astype(np.int32))
  assert (diff.reshape(8, -1).max(axis=1) > 0).all()  # every augmented image differs from its original
  assert diff.mean() > 1.0, diff.mean()


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
  bs, n_test = 4, len(src.splits["test"])
  rest = n_test % bs
  assert rest, f"batch size {bs} divides the {n_test} test images: the padded last batch is not exercised"
  batches = list(pipeline.eval_batches(builder, split="test", batch_size=bs, preprocessing=PP))
  assert len(batches) == -(-n_test // bs)
  for b in batches:
    assert b["image"].shape == (bs, 24, 24, 3) and b["image"].dtype == np.uint8
    assert b["valid"].shape == (bs,) and b["valid"].dtype == bool
    assert b["filename"].shape == (bs,) and len(b["references"]) == bs
  assert all(b["valid"].all() for b in batches[:-1])
  last = batches[-1]
  np.testing.assert_array_equal(last["valid"], np.arange(bs) < rest)
  pad = ~last["valid"]
  assert (last["image"][pad] == 0).all()
  # String rows are padded with falsy values (batching.pad_rows); nothing of a real example leaks in.
  assert not any(last["filename"][pad]) and not any(last["references"][pad].ravel())
  assert all(last["image"][i].any() and last["filename"][i] for i in range(rest))  # real rows are not blank
  names = [f.decode() for b in batches for f, ok in zip(b["filename"], b["valid"]) if ok]
  assert sorted(names) == sorted(src.splits["test"])
  refs = [r for b in batches for r in pipeline.references(b)]
  assert refs == [src.captions[n] for n in names]


def test_resize_matches_target_and_is_noop_at_size():
  img = tf.constant(np.random.default_rng(0).integers(0, 255, (24, 24, 3)), tf.uint8)
  np.testing.assert_array_equal(pipeline.resize_uint8(img, 24).numpy(), img.numpy())
  assert pipeline.resize_uint8(img, 10).shape == (10, 10, 3)


def test_image_from_bytes_gives_pils_pixels_and_load_image_resizes():
  import io

  from PIL import Image

  from jaxcap.data import images
  arr = np.random.default_rng(1).integers(0, 255, (30, 40, 3)).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="JPEG", quality=85)
  data = buf.getvalue()
  got = pipeline.image_from_bytes(tf.constant(data)).numpy()
  np.testing.assert_array_equal(got, images.read_image(data))  # accurate IDCT: exactly PIL's pixels
  resized = pipeline.load_image(tf.constant(data), 24).numpy()
  assert resized.shape == (24, 24, 3) and resized.dtype == np.uint8
  np.testing.assert_array_equal(resized, images.resize(got, 24))
