"""The consensus index and the reranking it does, in numpy: nothing here loads a model or a checkpoint.

An index holds every train image's grid (from one checkpoint's encoder), mean-pooled and L2-normalized, with
the image's reference captions and file name, and names the dataset they came from. Beam search's captions of a
photo are ranked by

    beam score + weight * CIDEr-D(caption, the references of the k train images nearest the photo)

(nearest: cosine of the pooled grids; CIDEr-D: `jaxcap.cider`, with the train references' document
frequencies). k and weight are stored with the index; `evaluator.Settings` can override them, and weight 0
turns reranking off.

An evaluated image that is also one of the index's train images would be scored against its own references: the
split's figures would be inflated by a leak (e.g. `--data_dir` naming a dataset whose train split holds the test
photos). `check_disjoint` refuses such a split; images are identified by file name, as the feature cache does.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from jaxcap import fileio
from jaxcap.cider import CiderD
from jaxcap.data import vocab as vocab_lib

FILENAME = "consensus.npz"
_FORMAT = 2  # 2: the train images' file names and the dataset (format 1 had neither)


class ConsensusError(Exception):
  """An index file that cannot be used (one line naming it and why)."""


@dataclasses.dataclass
class Index:
  features: np.ndarray               # [N, C] mean-pooled train grids, L2-normalized; float16 on disk, float32 here
  references: list[list[str]]        # [N] normalized reference captions of each train image
  image_ids: list[str]               # [N] each train image's file name (row order): what `check_disjoint` reads
  dataset: str                       # the dataset whose train split it holds (`dataset.describe`), for messages
  encoder: str                       # the grids' encoder (name-size-digest), checked against the reader's
  k: int = 15                        # neighbours whose references a caption is scored against
  weight: float = 4.0                # consensus CIDEr-D's weight beside the beam score
  path: str = ""                     # the file it was saved to or read from ("" until then), for messages

  def __post_init__(self):
    self.image_ids = list(self.image_ids)
    if not len(self.features) == len(self.references) == len(self.image_ids):
      raise ConsensusError(f"{self.path or 'consensus index'}: {len(self.features)} grids, "
                           f"{len(self.references)} caption sets and {len(self.image_ids)} image names")
    self.scorer = CiderD(self.references)
    # float16 precision (the file's), one float32 copy for the per-batch product: an index built here and the
    # same one read back rank alike, and memory holds one copy, not a float16 and a float32 one.
    self.features = np.asarray(self.features, np.float16).astype(np.float32)

  def save(self, path: str) -> None:
    meta = {"format": _FORMAT, "encoder": self.encoder, "k": self.k, "weight": self.weight,
            "dataset": self.dataset, "image_ids": self.image_ids, "references": self.references}
    with fileio.atomic_paths(path) as (tmp,):
      np.savez(tmp, features=self.features.astype(np.float16), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    self.path = path

  @classmethod
  def load(cls, path: str) -> "Index":
    rebuild = "rebuild it with `python -m jaxcap.consensus --checkpoint <workdir>`"
    try:
      with np.load(path) as f:
        features, meta = f["features"], json.loads(f["meta"].tobytes())
      if meta.get("format") != _FORMAT:
        raise ConsensusError(f"{path}: consensus index format {meta.get('format')!r}, this code reads {_FORMAT}; "
                             + rebuild)
      fields = (meta["references"], [str(n) for n in meta["image_ids"]], str(meta["dataset"]), meta["encoder"],
                int(meta["k"]), float(meta["weight"]))
    except ConsensusError:
      raise
    except Exception as e:  # noqa: BLE001  (zip, npy, JSON and missing fields alike: a damaged file)
      raise ConsensusError(f"{path}: not a readable consensus index ({type(e).__name__}: {e}); {rebuild}") from None
    try:
      return cls(features, *fields, path=path)
    except ConsensusError as e:
      raise ConsensusError(f"{e}; {rebuild}") from None

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


def load_checked(path: str, encoder: str, source: str) -> Index:
  """The index at `path` for the checkpoint `source`, whose encoder id is `encoder`; ConsensusError when it
  cannot be read or was built from other grids than that encoder gives."""
  index = Index.load(path)
  if index.encoder != encoder:
    raise ConsensusError(f"{path}: built from {index.encoder} grids, but {source} encodes with "
                         f"{encoder}; rebuild it")
  return index


def check_disjoint(index: Index, names: Sequence[str], split: str) -> None:
  """ConsensusError (one line) when any of `names` (the file names of the `split` images about to be re-ranked)
  is one of the index's train images: each would be ranked by its own references. Saying how to fix it: an index
  from the dataset whose train split excludes them, or no reranking."""
  held = set(index.image_ids)
  overlap = [n for n in names if n in held]
  if overlap:
    workdir = os.path.dirname(index.path) if index.path else "<workdir>"  # the index lives in its workdir
    raise ConsensusError(
        f"{index.path or 'consensus index'}: {len(overlap)} of the {len(names)} {split} images are among the "
        f"{len(index.image_ids)} train images it was built from ({index.dataset}), e.g. {overlap[0]}, so their own "
        "references would rank their captions; rebuild it from the dataset whose train split excludes them "
        f"(`python -m jaxcap.consensus --checkpoint {workdir} --data_dir DIR`), or turn reranking off (weight 0: "
        "--rerank_weights 0)")


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
