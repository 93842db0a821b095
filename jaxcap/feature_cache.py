"""Frozen-encoder feature cache: every image of a split encoded once, stored on disk as float16.

Layout: <cache_dir>/<split>.npy [N, h, w, C] float16 and <split>.json (file names, in row order). Files are
written under a temporary name and renamed when complete, so a crash never leaves a half cache that looks whole.
The cache directory name hashes everything the features depend on (dataset, encoder, weights file, size).
"""
from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxcap.data import pipeline


def cache_dir(root: str, dataset_dir: str, encoder_name: str, weights_id: str, size: int) -> str:
  key = f"{os.path.abspath(dataset_dir)}|{encoder_name}|{weights_id}|{size}"
  return os.path.join(root, f"{encoder_name}-{size}-{hashlib.sha1(key.encode()).hexdigest()[:12]}")


def load(directory: str, split: str) -> tuple[list[str], np.ndarray] | None:
  npy, names = os.path.join(directory, f"{split}.npy"), os.path.join(directory, f"{split}.json")
  if not (os.path.exists(npy) and os.path.exists(names)):
    return None
  with open(names) as f:
    return json.load(f), np.load(npy)


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
  for batch in pipeline.eval_batches(builder, split=split, batch_size=batch_size,
                                     preprocessing=encoder.preprocessing):
    grid = np.asarray(encode(variables, batch["image"]))
    if out is None:
      out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n,) + grid.shape[1:])
    k = int(batch["valid"].sum())
    out[len(names):len(names) + k] = grid[:k]
    names += [f.decode() for f in batch["filename"][:k]]
    bar.update(k)
  bar.close()
  assert out is not None and len(names) == n, (len(names), n)
  out.flush()
  del out
  with open(os.path.join(directory, f"{split}.json.tmp"), "w") as f:
    json.dump(names, f)
  os.replace(tmp, os.path.join(directory, f"{split}.npy"))
  os.replace(os.path.join(directory, f"{split}.json.tmp"), os.path.join(directory, f"{split}.json"))
  return load(directory, split)
