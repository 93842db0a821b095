"""Frozen-encoder feature cache: every image of a split encoded once, stored on disk as float16.

Layout: <cache_dir>/<split>.npy [N, h, w, C] float16 and <split>.json (file names, in row order). Files are
written under a temporary name and renamed when complete, so a crash never leaves a half cache that looks whole.
The cache directory name hashes everything the features depend on (dataset, encoder, weights file, pixels,
size); `directory` is the one place that key is made.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxcap import paths
from jaxcap.data import DataError, pipeline
from jaxcap.evaluator import SplitInputs


def directory(root: str, dataset_dir: str, encoder_name: str, weights_file: str | None, seed: int,
              size: int) -> str:
  """The cache folder for features of `dataset_dir` by this encoder with these weights (random init: the seed)
  at input `size`, under `root` ("" = <cache root>/features)."""
  root = root or os.path.join(paths.cache_root(), "features")
  weights_id = (os.path.basename(weights_file) + str(os.path.getmtime(weights_file)) if weights_file
                else f"random-seed{seed}")
  weights_id += f"|pixels{pipeline.PIXELS_VERSION}"
  key = f"{os.path.abspath(dataset_dir)}|{encoder_name}|{weights_id}|{size}"
  return os.path.join(root, f"{encoder_name}-{size}-{hashlib.sha1(key.encode()).hexdigest()[:12]}")


def load(directory: str, split: str) -> tuple[list[str], np.ndarray] | None:
  npy, names = os.path.join(directory, f"{split}.npy"), os.path.join(directory, f"{split}.json")
  if not (os.path.exists(npy) and os.path.exists(names)):
    return None
  with open(names) as f:
    return json.load(f), np.load(npy)


def encode_batches(builder, split: str, encode: Callable, preprocessing, batch_size: int,
                   limit: int = 0) -> Iterator[tuple[list[str], np.ndarray, list[list[str]]]]:
  """(names, grids, references) of each eval batch of `split` (its valid rows; the first `limit` images),
  grids = encode(uint8 images [batch_size, S, S, 3]) as numpy."""
  seen = 0
  for batch in pipeline.eval_batches(builder, split=split, batch_size=batch_size, preprocessing=preprocessing):
    k = int(batch["valid"].sum())
    if limit:
      k = min(k, limit - seen)
    grids = np.asarray(encode(batch["image"]))[:k]
    yield [f.decode() for f in batch["filename"][:k]], grids, pipeline.references(batch)[:k]
    seen += k
    if limit and seen >= limit:
      return


def encode_split(encode: Callable, builder, split: str, preprocessing, batch_size: int, limit: int = 0,
                 progress: bool = False) -> SplitInputs:
  """Every image of `split` (the first `limit`) through the eval pipeline and `encode(images)`, kept in memory
  (not cached: the encoder may be training)."""
  n = builder.info.splits[split].num_examples
  names, grids, refs = [], [], []
  bar = tqdm(total=min(n, limit or n), desc=f"encode {split}", unit="img", disable=not progress)
  for batch_names, g, r in encode_batches(builder, split, encode, preprocessing, batch_size, limit):
    names += batch_names
    grids.append(g)
    refs += r
    bar.update(len(g))
  bar.close()
  return SplitInputs(names, np.concatenate(grids), refs)


def extract(builder, split: str, encoder, variables, directory: str, batch_size: int = 32,
            verbose: bool = True) -> tuple[list[str], np.ndarray]:
  """Encodes every image of `split` (cached after the first call)."""
  cached = load(directory, split)
  if cached is not None:
    return cached
  os.makedirs(directory, exist_ok=True)
  encode = jax.jit(lambda v, x: encoder.apply(v, x)[0].astype(jnp.float16))
  n = builder.info.splits[split].num_examples
  names, out = [], None
  tmp = os.path.join(directory, f"{split}.tmp.npy")
  bar = tqdm(total=n, desc=f"features {split}", unit="img", disable=not verbose)
  try:
    for batch_names, grid, _ in encode_batches(builder, split, lambda x: encode(variables, x),
                                               encoder.preprocessing, batch_size):
      if out is None:
        out = _allocate(tmp, (n,) + grid.shape[1:])
      out[len(names):len(names) + len(grid)] = grid
      names += batch_names
      bar.update(len(grid))
    bar.close()
    assert out is not None and len(names) == n, (len(names), n)
    out.flush()
    del out
    with open(os.path.join(directory, f"{split}.json.tmp"), "w") as f:
      json.dump(names, f)
    os.replace(tmp, os.path.join(directory, f"{split}.npy"))
    os.replace(os.path.join(directory, f"{split}.json.tmp"), os.path.join(directory, f"{split}.json"))
  except OSError as e:
    out = None
    for f in (tmp, os.path.join(directory, f"{split}.json.tmp")):
      if os.path.exists(f):
        os.remove(f)
    cause, fix = paths.io_cause(e) or (e.strerror or str(e), "fix it")
    raise DataError(f"{directory}: cannot write the feature cache ({cause}); {fix} and rerun (nothing "
                    f"half-written is kept)") from None
  return load(directory, split)


def _allocate(path: str, shape: tuple[int, ...]) -> np.memmap:
  """A float16 .npy of `shape` as a writable memmap, its blocks reserved on disk first: a memmap over a sparse
  file on a full disk dies of SIGBUS at some write, a reservation fails with ENOSPC at once."""
  out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
  fd = os.open(path, os.O_RDWR)
  try:
    os.posix_fallocate(fd, 0, os.path.getsize(path))
  finally:
    os.close(fd)
  return out
