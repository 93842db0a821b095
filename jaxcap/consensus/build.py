"""A consensus index from a checkpoint: its first member's encoder over its dataset's train split.

    path = write("workdirs/flickr8k_lite0", k=15, weight=4.0)   # <workdir>/consensus.npz

The grids come from the feature cache the checkpoint's training filled when it holds what this encoder gives,
else the train images are encoded now.
"""
from __future__ import annotations

import sys
import time

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxcap import checkpoint, feature_cache, inference
from jaxcap.consensus.index import ConsensusError, Index, pool
from jaxcap.data import dataset, tfds_builder
from jaxcap.data import vocab as vocab_lib


def build(captioner: inference.Captioner, builder, batch_size: int = 64, k: int = 15, weight: float = 4.0,
          progress: bool = True, dataset_name: str | None = None) -> Index:
  """The index of `builder`'s train split for the Captioner's first member: grids from the feature cache its
  training filled, when the cache holds what this checkpoint's encoder gives (checked on the first batch: a
  fine-tuned encoder does not), else encoded now. It records the train images' file names (row order), which
  evaluation checks its split against, and `dataset_name` (`dataset.describe` of the data config; default: the
  prepared copy the feature cache is keyed by)."""
  m = captioner.members[0]
  preprocessing = m.model.encoder.preprocessing
  encode = lambda x: m._encode(m.variables, jnp.asarray(x))  # noqa: E731  (this member's encoder only)
  batches = feature_cache.encode_batches(builder, "train", encode, preprocessing, batch_size)
  first_names, first, _ = next(batches)
  cached = feature_cache.load(feature_cache.directory_for(
      m.config, builder, preprocessing.size, m.encoder_variables()), "train")
  if cached is not None and cached[0][:len(first_names)] == first_names and np.allclose(
      np.asarray(cached[1][:len(first)], np.float32), first, rtol=1e-2, atol=1e-2):  # float16 in the cache
    names, rows = cached
    feats = np.concatenate([pool(rows[i:i + 512]) for i in range(0, len(names), 512)])
  else:
    names, parts = list(first_names), [pool(first)]
    for batch_names, grids, _ in tqdm(batches, desc="encode train", unit="batch", disable=not progress,
                                      total=-(-builder.info.splits["train"].num_examples // batch_size) - 1):
      names += batch_names
      parts.append(pool(grids))
    feats = np.concatenate(parts)
  captions = tfds_builder.split_captions(builder, "train")[1]
  refs = [[" ".join(vocab_lib.normalize(c)) for c in captions[n]] for n in names]
  dataset_name = dataset_name or getattr(builder, "cache_id", builder.data_dir)
  return Index(feats, refs, list(names), dataset_name, inference.encoder_id(captioner), k, weight)


def write(checkpoint_path: str, data_dir: str | None = None, k: int = 15, weight: float = 4.0,
          log=lambda *x: print(*x, file=sys.stderr, flush=True)) -> str:
  """Builds and saves the index of a workdir (the recipe calls this); returns its path."""
  if k < 1 or weight < 0:
    raise ConsensusError(f"k={k}, weight={weight}: k must be >= 1 and weight >= 0")
  t0 = time.time()
  cap = inference.Captioner.load(checkpoint_path, warn=log, rerank=False)  # an index there is about to be replaced
  data = cap.config.data.copy_and_resolve_references()
  if data_dir:
    data.data_dir, data.tfds_dir, data.synthetic = data_dir, "", False
  path = inference.consensus_path(cap.source)
  if path is None:
    raise ConsensusError(f"{cap.source}: a step directory outside a workdir (<workdir>/{checkpoint.LATEST}/<step>); "
                         "give the training workdir, where the index goes")
  index = build(cap, dataset.prepare(data, verbose=False), k=k, weight=weight, dataset_name=dataset.describe(data))
  index.save(path)
  log(f"consensus index of {len(index.references)} train images of {index.dataset} ({index.encoder}, k={k}, "
      f"weight={weight:g}) in {time.time() - t0:.0f}s: {path}")
  return path
