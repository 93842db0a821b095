"""In-memory (image, caption) pairs and a deterministic, resumable, length-bucketed batch schedule.

Used when images are represented by cached features: batches are index arrays, so the batch at any step is a
pure function of (seed, step): resuming after a crash replays exactly the same data order. Length bucketing
sorts pairs by length inside chunks of `chunk_batches` batches, so short captions do not pay for padding;
each batch is cut to its longest caption rounded up to a multiple of `pad_multiple` (few distinct shapes, so
few compilations). The sorted batches are shuffled in runs of `group_batches` neighbours, so several steps per
dispatch (which pad to the longest of their steps) see similar lengths at any steps_per_dispatch dividing it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxcap.data import vocab as vocab_lib


@dataclasses.dataclass
class CaptionPairs:
  image_index: np.ndarray   # [M] int32, row of the image in its split's feature array
  tokens: np.ndarray        # [M, max_len] int32
  lengths: np.ndarray       # [M] int32, real tokens including <start> and <end>


def caption_pairs(names: list[str], captions: dict[str, list[str]], vocab: vocab_lib.Vocab,
                  max_len: int) -> CaptionPairs:
  idx, toks = [], []
  for i, name in enumerate(names):
    for c in captions[name]:
      ids = vocab.to_ids(c, max_len)
      idx.append(i)
      toks.append(ids + [vocab_lib.PAD_ID] * (max_len - len(ids)))
  tokens = np.asarray(toks, np.int32).reshape(-1, max_len)
  return CaptionPairs(np.asarray(idx, np.int32), tokens, (tokens != vocab_lib.PAD_ID).sum(1).astype(np.int32))


class Schedule:
  """Global batches of pair indices; epoch e's order depends only on (seed, e)."""

  def __init__(self, lengths: np.ndarray, batch_size: int, seed: int | tuple[int, ...] = 0, bucket: bool = True,
               chunk_batches: int = 48, pad_multiple: int = 4, group_batches: int = 8):
    if len(lengths) < batch_size:
      raise ValueError(f"{len(lengths)} training captions cannot fill one batch of {batch_size}")
    self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
    self.bucket, self.chunk_batches, self.pad_multiple = bucket, chunk_batches, pad_multiple
    self.group_batches = group_batches
    self.steps_per_epoch = len(lengths) // batch_size
    self._cache: tuple[int, list[np.ndarray]] | None = None

  def epoch(self, e: int) -> list[np.ndarray]:
    if self._cache and self._cache[0] == e:
      return self._cache[1]
    rng = np.random.default_rng([*np.atleast_1d(self.seed), e])  # a tuple seeds one stream per shard
    order = rng.permutation(len(self.lengths))[: self.steps_per_epoch * self.batch_size]
    if self.bucket:
      chunk = self.chunk_batches * self.batch_size
      order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")]
                              for c in np.split(order, range(chunk, len(order), chunk))])
    batches = order.reshape(self.steps_per_epoch, self.batch_size)
    if self.bucket:
      groups = np.split(np.arange(self.steps_per_epoch), range(self.group_batches, self.steps_per_epoch,
                                                                  self.group_batches))
      batches = batches[np.concatenate([groups[g] for g in rng.permutation(len(groups))])]
    self._cache = (e, list(batches))
    return self._cache[1]

  def batch(self, step: int) -> np.ndarray:
    return self.epoch(step // self.steps_per_epoch)[step % self.steps_per_epoch]

  def padded_length(self, idx: np.ndarray, max_len: int) -> int:
    return int(cut_length(self.lengths[idx].max(-1), self.pad_multiple, max_len))


class ImageMajorSchedule(Schedule):
  """Global batches of pair indices grouped by image: batch_size / per_image images a step, each with
  `per_image` of its captions side by side (rows j*per_image .. (j+1)*per_image - 1 share an image), so a feed
  computing something per image (the top of the encoder, `jaxcap.feeds.top`) does it once for its captions.
  Epoch e's order depends only on (seed, e): the images shuffled, and each image's captions drawn without
  repeats (cycled when it has fewer than `per_image`; the others of an image with more are seen in other
  epochs). Not length-bucketed: an image's captions come together whatever their lengths."""

  def __init__(self, image_index: np.ndarray, lengths: np.ndarray, batch_size: int, per_image: int,
               seed: int | tuple[int, ...] = 0, pad_multiple: int = 4):
    if per_image < 1 or batch_size % per_image:
      raise ValueError(f"batch {batch_size} is not a whole number of images of {per_image} captions")
    super().__init__(lengths, batch_size, seed, bucket=False, pad_multiple=pad_multiple)
    order = np.argsort(image_index, kind="stable")
    images, starts = np.unique(image_index[order], return_index=True)
    self.captions_of = np.split(order, starts[1:])  # pair indices of each image that has captions
    self.per_image = per_image
    images_per_step = batch_size // per_image
    self.steps_per_epoch = len(self.captions_of) // images_per_step
    if self.steps_per_epoch == 0:
      raise ValueError(f"{len(self.captions_of)} training images cannot fill one batch of {images_per_step}")

  def epoch(self, e: int) -> list[np.ndarray]:
    if self._cache and self._cache[0] == e:
      return self._cache[1]
    rng = np.random.default_rng([*np.atleast_1d(self.seed), e])
    k = self.per_image
    images = rng.permutation(len(self.captions_of))[: self.steps_per_epoch * (self.batch_size // k)]
    rows = np.stack([np.resize(rng.permutation(self.captions_of[i]), k) for i in images])
    self._cache = (e, list(rows.reshape(self.steps_per_epoch, self.batch_size)))
    return self._cache[1]


def make_schedule(pairs: CaptionPairs, batch_size: int, seed: int | tuple[int, ...] = 0, bucket: bool = True,
                  per_image: int = 0, rows: np.ndarray | None = None) -> Schedule:
  """The schedule over pairs `rows` (default all): caption-major (`Schedule`, length-bucketed when `bucket`) when
  `per_image` is 0, else image-major (`ImageMajorSchedule`); batch indices are positions in `rows`."""
  rows = np.arange(len(pairs.lengths)) if rows is None else rows
  if per_image:
    return ImageMajorSchedule(pairs.image_index[rows], pairs.lengths[rows], batch_size, per_image, seed)
  return Schedule(pairs.lengths[rows], batch_size, seed, bucket=bucket)


def cut_length(longest, multiple: int, max_len: int):
  """The length a batch is cut to (an int, or one per row of an array): its longest caption rounded up to a
  multiple of `multiple`, at most max_len."""
  return np.minimum(max_len, -(-longest // multiple) * multiple)


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """x with zero rows (empty strings for bytes) appended up to `size` rows: one compiled shape per batch size."""
  if len(x) >= size:
    return x
  return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def process_rows(batch_size: int, index: int, count: int) -> slice:
  """The rows of a global batch of `batch_size` that process `index` of `count` holds: an even, contiguous
  slice (the data axis spans the processes' devices in order)."""
  per_proc = batch_size // count
  return slice(index * per_proc, (index + 1) * per_proc)
