"""Consensus reranking (Devlin et al. 2015, "Exploring nearest neighbor approaches for image captioning"; Mao et
al. 2015): beam search's captions of a photo re-ranked by how well they agree with what people wrote about the
training photos that look most like it.

    python -m jaxcap.consensus --checkpoint workdirs/flickr8k_lite0 [--data_dir DIR] [--k 15 --weight 4]

writes <workdir>/consensus.npz: every train image's grid from the checkpoint's encoder, mean-pooled and
L2-normalized, with the image's reference captions. A `Captioner` loaded from that workdir (the first member of
an ensemble) finds it, and every beam search it runs (the evaluator, `jaxcap.caption`, the batching service and
the app) ranks the beams by

    beam score + weight * CIDEr-D(caption, the references of the k train images nearest the photo)

(nearest: cosine of the pooled grids; CIDEr-D: `jaxcap.cider`, with the train references' document
frequencies). k and weight are stored with the index (chosen on dev); `evaluator.Settings` can override them,
and weight 0 turns reranking off. Greedy decoding has nothing to rerank.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Sequence

import numpy as np
from tqdm import tqdm

from jaxcap import fileio
from jaxcap.cider import CiderD
from jaxcap.data import vocab as vocab_lib

FILENAME = "consensus.npz"
_FORMAT = 1


class ConsensusError(Exception):
  """An index file that cannot be used (one line naming it and why)."""


@dataclasses.dataclass
class Index:
  features: np.ndarray               # [N, C] mean-pooled train grids, L2-normalized; float16 on disk, float32 here
  references: list[list[str]]        # [N] normalized reference captions of each train image
  encoder: str                       # the encoder the grids came from (name-size), checked against the query's
  k: int = 15                        # neighbours whose references a caption is scored against
  weight: float = 4.0                # consensus CIDEr-D's weight beside the beam score

  def __post_init__(self):
    self.scorer = CiderD(self.references)
    # float16 precision (the file's), one float32 copy for the per-batch product: an index built here and the
    # same one read back rank alike, and memory holds one copy, not a float16 and a float32 one.
    self.features = np.asarray(self.features, np.float16).astype(np.float32)

  def save(self, path: str) -> None:
    meta = {"format": _FORMAT, "encoder": self.encoder, "k": self.k, "weight": self.weight,
            "references": self.references}
    with fileio.atomic_paths(path) as (tmp,):
      np.savez(tmp, features=self.features.astype(np.float16), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

  @classmethod
  def load(cls, path: str) -> "Index":
    rebuild = "rebuild it with `python -m jaxcap.consensus --checkpoint <workdir>`"
    try:
      with np.load(path) as f:
        features, meta = f["features"], json.loads(f["meta"].tobytes())
      if meta.get("format") != _FORMAT:
        raise ConsensusError(f"{path}: consensus index format {meta.get('format')!r}, this code reads {_FORMAT}; "
                             + rebuild)
      fields = meta["references"], meta["encoder"], int(meta["k"]), float(meta["weight"])
    except ConsensusError:
      raise
    except Exception as e:  # noqa: BLE001  (zip, npy, JSON and missing fields alike: a damaged file)
      raise ConsensusError(f"{path}: not a readable consensus index ({type(e).__name__}: {e}); {rebuild}") from None
    if len(fields[0]) != len(features):
      raise ConsensusError(f"{path}: {len(features)} grids for {len(fields[0])} caption sets; {rebuild}")
    return cls(features, *fields)

  def neighbours(self, grids: np.ndarray, k: int) -> np.ndarray:
    """[B, k] train rows nearest each grid of [B, h, w, C] (cosine of the mean-pooled grids)."""
    sims = pool(grids) @ self.features.T
    k = min(k, sims.shape[1])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), axis=1), 1)

  def consensus(self, grids: np.ndarray, captions: Sequence[Sequence[str]], k: int) -> np.ndarray:
    """[B, K] CIDEr-D of captions[b][j] (normalized text) against the references of grid b's k nearest train
    images."""
    near = self.neighbours(grids, k)
    refs = [[r for i in row for r in self.references[i]] for row in near]
    flat = [c for cs in captions for c in cs]
    owner = np.repeat(np.arange(len(captions)), [len(cs) for cs in captions])
    return self.scorer.score(flat, refs, ref_index=owner).reshape(len(captions), -1)


def pool(grids: np.ndarray) -> np.ndarray:
  """[B, h, w, C] -> [B, C] mean over the grid, L2-normalized (float32)."""
  x = np.asarray(grids, np.float32).mean(axis=(1, 2))
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rerank(index: Index, vocab: vocab_lib.Vocab, grids: np.ndarray, tokens: np.ndarray, scores: np.ndarray,
           k: int, weight: float) -> tuple[np.ndarray, np.ndarray]:
  """(order [B, K], new scores [B, K] in that order): beams re-ranked by score + weight * consensus CIDEr-D.
  As beam search ranks them, captions that never reached <end> (cut at max_len) stay after every ended one,
  and empty slots (score -inf, a beam wider than what the model can say) last."""
  texts = [[" ".join(vocab_lib.normalize(vocab.to_text(t))) for t in row] for row in tokens]
  combined = np.where(np.isfinite(scores), scores + weight * index.consensus(grids, texts, k), -np.inf)
  unended = ~(tokens == vocab_lib.END_ID).any(-1)
  order = np.lexsort((-combined, unended), axis=-1)  # by ended first, then the combined score (stable)
  return order, np.take_along_axis(combined, order, 1)


class Reranker:
  """`evaluator.decode_grids`' rerank: an index, and the vocabulary the beams' tokens are read with. k and
  weight are the index's unless the decoding settings override them; weight 0 keeps the beam order."""

  def __init__(self, index: Index, vocab: vocab_lib.Vocab):
    self.index, self.vocab = index, vocab

  def resolve(self, settings) -> tuple[int, float]:
    """(k, weight) that decoding `settings` rank with: theirs, else the index's."""
    k = self.index.k if settings.rerank_k is None else settings.rerank_k
    if k < 1:
      raise ConsensusError(f"rerank_k={k}: must be >= 1")
    return k, self.index.weight if settings.rerank_weight is None else settings.rerank_weight

  def __call__(self, grids, tokens: np.ndarray, scores: np.ndarray, settings):
    """grids: the batch's first-member grids (on the device, maybe padded past len(tokens)), copied to the host
    only when there is something to rank."""
    k, weight = self.resolve(settings)
    if weight <= 0:
      return None
    grids = np.asarray(grids[:len(tokens)])
    if grids.shape[-1] != self.index.features.shape[-1]:
      raise ConsensusError(f"consensus index of {self.index.encoder} grids ({self.index.features.shape[-1]} "
                           f"channels) cannot rank captions of {grids.shape[-1]}-channel grids")
    return rerank(self.index, self.vocab, grids, tokens, scores, k, weight)


def encoder_id(captioner) -> str:
  """What the index's grids must match: the first member's encoder, input size and a digest of its weights
  (a checkpoint fine-tuned after the index was built has other grids)."""
  import jax
  m = captioner.members[0]
  digest, weights = hashlib.sha1(), m.encoder_variables()
  for k in ("params", "batch_stats"):  # this order (not jax.tree's sorted one): indexes built so far stay valid
    for leaf in jax.tree.leaves(weights[k]):
      digest.update(np.ascontiguousarray(leaf).tobytes())
  return f"{m.config.model.encoder}-{m.model.encoder.preprocessing.size}-{digest.hexdigest()[:12]}"


def _path(captioner) -> str | None:
  from jaxcap import checkpoint
  workdir = checkpoint.workdir_of(captioner.source)
  return os.path.join(workdir, FILENAME) if workdir else None


def find(captioner) -> Index | None:
  """The index in the workdir of a Captioner's first member, if built; ConsensusError when it cannot be read or
  was built from other grids than that member's encoder gives."""
  path = _path(captioner)
  if path is None or not os.path.exists(path):
    return None
  index, encoder = Index.load(path), encoder_id(captioner)
  if index.encoder != encoder:
    raise ConsensusError(f"{path}: built from {index.encoder} grids, but {captioner.source} encodes with "
                         f"{encoder}; rebuild it")
  return index


def build(captioner, builder, batch_size: int = 64, k: int = 15, weight: float = 4.0,
          progress: bool = True) -> Index:
  """The index of `builder`'s train split for the Captioner's first member: grids from the feature cache its
  training filled, when the cache holds what this checkpoint's encoder gives (checked on the first batch: a
  fine-tuned encoder does not), else encoded now."""
  import jax.numpy as jnp

  from jaxcap import feature_cache
  from jaxcap.data import tfds_builder
  from jaxcap.feeds import CachedFeatures
  m = captioner.members[0]
  preprocessing = m.model.encoder.preprocessing
  encode = lambda x: m._encode(m.variables, jnp.asarray(x))  # noqa: E731  (this member's encoder only)
  batches = feature_cache.encode_batches(builder, "train", encode, preprocessing, batch_size)
  first_names, first, _ = next(batches)
  cached = feature_cache.load(CachedFeatures.cache_directory(m.config, builder, preprocessing.size), "train")
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
  return Index(feats, refs, encoder_id(captioner), k, weight)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxcap.consensus", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="workdir (the index goes into it)")
  p.add_argument("--data_dir", default=None, help="dataset folder (default: the one in the checkpoint's config)")
  p.add_argument("--k", type=int, default=15, help="neighbours per photo (15 was best on Flickr8k dev)")
  p.add_argument("--weight", type=float, default=4.0, help="consensus weight beside the beam score (4 on Flickr8k dev)")
  a = p.parse_args(argv)
  from jaxcap import checkpoint
  from jaxcap.data import DataError
  from jaxcap.inference import CheckpointError
  checkpoint.quiet_orbax_errors()
  try:
    path = write(a.checkpoint, a.data_dir, a.k, a.weight)
  except (CheckpointError, DataError, ConsensusError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


def write(checkpoint_path: str, data_dir: str | None = None, k: int = 15, weight: float = 4.0,
          log=lambda *x: print(*x, file=sys.stderr, flush=True)) -> str:
  """Builds and saves the index of a workdir (the recipe calls this); returns its path."""
  from jaxcap import checkpoint
  from jaxcap.data import dataset
  from jaxcap.inference import Captioner
  if k < 1 or weight < 0:
    raise ConsensusError(f"k={k}, weight={weight}: k must be >= 1 and weight >= 0")
  t0 = time.time()
  cap = Captioner.load(checkpoint_path, warn=log, rerank=False)  # an index there is about to be replaced
  data = cap.config.data.copy_and_resolve_references()
  if data_dir:
    data.data_dir, data.tfds_dir, data.synthetic = data_dir, "", False
  path = _path(cap)
  if path is None:
    raise ConsensusError(f"{cap.source}: a step directory outside a workdir (<workdir>/{checkpoint.LATEST}/<step>); "
                         "give the training workdir, where the index goes")
  index = build(cap, dataset.prepare(data, verbose=False), k=k, weight=weight)
  index.save(path)
  log(f"consensus index of {len(index.references)} train images ({index.encoder}, k={k}, weight={weight:g}) "
      f"in {time.time() - t0:.0f}s: {path}")
  return path


if __name__ == "__main__":
  sys.exit(main())
