"""tf.data pipelines over a prepared Flickr8k TFDS dataset; batches come out as numpy dicts.

Train batch:  image [B, S, S, 3] uint8, tokens [B, L] int32 (<start> words <end> <pad>..., cut to L),
              mask [B, L] float32 (1 on real tokens).
Eval batch:   image, filename [B] bytes, references [B, R] bytes ('' pads), valid [B] bool: the last partial
              batch is padded to B with valid=False, so every batch has one shape and nothing is dropped.

Images always leave as uint8: the encoder normalizes on device (4x less host->device traffic), with the
same `Preprocessing` the pipeline resized with (the pipeline uses only its size).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from jaxcap.data import batching
from jaxcap.data import vocab as vocab_lib
from jaxcap.data.preprocessing import Preprocessing
from jaxcap.data.tf_setup import tf


def tokenize(captions: tf.Tensor, table: tf.lookup.StaticHashTable, max_len: int) -> tf.Tensor:
  """tf version of `Vocab.to_ids` for a [N] string tensor -> [N, max_len] int32 (tested to agree)."""
  s = tf.strings.regex_replace(tf.strings.lower(captions), vocab_lib.TF_PUNCT_PATTERN, "")
  words = tf.strings.split(s)
  words = tf.ragged.boolean_mask(words, tf.strings.regex_full_match(words, vocab_lib.TF_WORD_PATTERN))
  ids = tf.cast(table.lookup(words), tf.int32)
  n = tf.shape(captions)[0]
  ids = tf.concat([tf.fill([n, 1], vocab_lib.START_ID), ids, tf.fill([n, 1], vocab_lib.END_ID)], axis=1)
  return ids.to_tensor(default_value=vocab_lib.PAD_ID, shape=[None, max_len])


def lookup_table(vocab: vocab_lib.Vocab) -> tf.lookup.StaticHashTable:
  init = tf.lookup.KeyValueTensorInitializer(tf.constant(vocab.tokens), tf.range(len(vocab), dtype=tf.int64))
  return tf.lookup.StaticHashTable(init, default_value=vocab_lib.UNK_ID)


# Bumped whenever reading or resizing images changes the pixels (feature caches are keyed by it).
PIXELS_VERSION = 2


def image_from_bytes(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded image bytes -> [H, W, 3] uint8; first frame of animations.

  JPEGs use the accurate integer IDCT, which gives exactly PIL's pixels (TF's default fast IDCT differs by up
  to 19 levels), so training and the PIL-based `jaxcap.data.images.read_image` see the same image.
  """
  img = tf.cond(tf.io.is_jpeg(encoded),
                lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
                lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
  img.set_shape([None, None, 3])
  return img


def load_image(encoded: tf.Tensor, size: int) -> tf.Tensor:
  """Encoded image bytes -> [size, size, 3] uint8 (no-op resize when already sized)."""
  return resize_uint8(image_from_bytes(encoded), size)


def resize_uint8(img: tf.Tensor, size: int) -> tf.Tensor:
  """[H, W, 3] uint8 -> [size, size, 3] uint8 with bilinear antialiased resampling (rounded)."""
  def resize():
    x = tf.image.resize(img, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)
  same = tf.logical_and(tf.shape(img)[0] == size, tf.shape(img)[1] == size)
  return tf.cond(same, lambda: tf.identity(img), resize)


def _augment(img: tf.Tensor, size: int) -> tf.Tensor:
  # Crop and light photometric changes only: a horizontal flip would make "left"/"right" in captions wrong.
  scale = tf.random.uniform([], 0.8, 1.0)
  side = tf.cast(tf.cast(tf.shape(img)[0], tf.float32) * scale, tf.int32)
  img = tf.image.random_crop(img, [side, side, 3])
  img = resize_uint8(img, size)
  x = tf.image.random_brightness(tf.cast(img, tf.float32), 0.1 * 255)
  x = tf.image.random_contrast(x, 0.9, 1.1)
  return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def _read(builder, split: str, shuffle_files: bool, seed: int):
  return builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()},
                            shuffle_files=shuffle_files, read_config=tfds.ReadConfig(shuffle_seed=seed))


def train_dataset(builder, vocab: vocab_lib.Vocab, *, batch_size: int, max_len: int,
                  preprocessing: Preprocessing, split: str = "train", augment: bool = False,
                  shuffle_buffer: int = 8192, seed: int = 0, repeat: bool = True,
                  process_index: int = 0, process_count: int = 1, skip_examples: int = 0) -> tf.data.Dataset:
  """(image, caption) pairs, one per caption, shuffled and batched with drop_remainder.

  Each process reads its own even slice of the split (`tfds.split_for_jax_process`); batch_size is the
  per-process batch. The order is a function of `seed`; `skip_examples` resumes it mid-way (skipped pairs'
  images never become pixels, so resuming is cheap).
  """
  sub = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
  ds = _read(builder, sub, shuffle_files=True, seed=seed)
  table = lookup_table(vocab)

  def pairs(ex):
    n = tf.shape(ex["captions"])[0]
    return {"image": tf.repeat(ex["image"][None], n), "tokens": tokenize(ex["captions"], table, max_len)}

  ds = ds.map(pairs, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  if repeat:
    ds = ds.repeat()
  # Shuffle encoded bytes (small), not pixels, so a large buffer is cheap.
  ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if skip_examples:
    ds = ds.skip(skip_examples)

  def load(ex):
    img = load_image(ex["image"], preprocessing.size)
    if augment:
      img = _augment(img, preprocessing.size)
    tokens = ex["tokens"]
    return {"image": img, "tokens": tokens, "mask": tf.cast(tokens != vocab_lib.PAD_ID, tf.float32)}

  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def train_batches(builder, vocab, **kwargs) -> Iterator[dict[str, np.ndarray]]:
  return iter(tfds.as_numpy(train_dataset(builder, vocab, **kwargs)))


def eval_dataset(builder, *, split: str, batch_size: int, preprocessing: Preprocessing) -> tf.data.Dataset:
  """Every image of `split` once, in a fixed order, with all its references."""
  ds = _read(builder, split, shuffle_files=False, seed=0)

  def load(ex):
    return {"image": load_image(ex["image"], preprocessing.size),
            "filename": ex["image/filename"], "references": ex["captions"]}

  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.padded_batch(batch_size).prefetch(tf.data.AUTOTUNE)


def eval_batches(builder, *, split: str, batch_size: int,
                 preprocessing: Preprocessing) -> Iterator[dict[str, np.ndarray]]:
  for batch in tfds.as_numpy(eval_dataset(builder, split=split, batch_size=batch_size,
                                          preprocessing=preprocessing)):
    yield pad_batch(batch, batch_size)


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads every array to batch_size rows (zeros / empty strings) and adds valid [B] bool."""
  n = len(next(iter(batch.values())))
  return {"valid": np.arange(batch_size) < n, **{k: batching.pad_rows(v, batch_size) for k, v in batch.items()}}


def references(batch: dict[str, np.ndarray]) -> list[list[str]]:
  """The valid rows' reference captions as str, padding dropped."""
  return [[r.decode() for r in refs if r] for refs, ok in zip(batch["references"], batch["valid"]) if ok]
