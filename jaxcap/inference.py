"""`Captioner`: a checkpoint directory in, captions out. The CLIs and the Streamlit app use it; checkpoints are
read through `jaxcap.checkpoint` and captions decoded through `jaxcap.evaluator`.

    cap = Captioner.load("workdirs/flickr8k_lite0")          # a workdir (its best-on-dev checkpoint) or a step dir
    [result] = cap.caption(["photo.jpg"], beam_size=3)
    result.caption, result.beams, result.attention           # attention: [words, h, w] (attend mode)

    ens = Captioner.load(["workdirs/seed0", "workdirs/seed1"])  # an ensemble: the decoders' mean

An ensemble's members must share the vocabulary (the mean is taken word by word); anything else may differ.
Each distinct encoder (architecture, input size, weights) encodes an image once and its members share the grid.
The ensemble's pixels are at its largest encoder input size; an encoder that takes fewer pixels resizes them
again (the training pipeline's resize) to its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcap import checkpoint, consensus, evaluator
from jaxcap import grids as grids_lib
from jaxcap.checkpoint import CheckpointError
from jaxcap.data import batching
from jaxcap.data import images as images_lib
from jaxcap.data.preprocessing import Preprocessing
from jaxcap.data.vocab import END_ID, PAD_ID, Vocab
from jaxcap.decode import member_grids
from jaxcap.models.caption_model import CaptionModel, encode_fn, make_model


@dataclasses.dataclass
class Beam:
  caption: str
  score: float          # the ranking score: log-probability / length penalty (+ weight x consensus CIDEr-D when
                        # re-ranked, `jaxcap.consensus`)
  log_prob: float


@dataclasses.dataclass
class Result:
  caption: str
  words: list[str]
  beams: list[Beam]
  attention: np.ndarray | None   # [len(words), h, w] for the best caption, attend mode only


class Captioner:
  """Loads once; captions PIL images, numpy arrays, file paths or bytes, greedy or beam search."""

  def __init__(self, model: CaptionModel, variables: dict, vocab: Vocab, config: ml_collections.ConfigDict,
               step: int = 0, source: str = "", others: Sequence["Captioner"] = ()):
    self.model, self.variables, self.vocab, self.config = model, variables, vocab, config
    self.step, self.source = step, source
    self.warnings: list[str] = []
    # Beam search's captions re-ranked by consensus with the nearest train images (`jaxcap.consensus`), when
    # the first member's workdir has an index (`load` finds it).
    self.reranker: consensus.Reranker | None = None
    self.mode = model.decoder.mode
    self._encode = encode_fn(model)
    for other in others:
      check_ensemble(self, other)
    # This checkpoint first, then the other ensemble members (checked: same vocabulary).
    self.members: tuple[Captioner, ...] = (self, *others)
    self.decoders = tuple(m.model.decoder for m in self.members)
    self.decoder_params = tuple(m.variables["params"]["decoder"] for m in self.members)
    self.sources = [m.source for m in self.members]
    # Member i reads the grid of the first member on the same encoder.
    self._encoder_of = tuple(next(j for j, o in enumerate(self.members) if same_encoder(o, m))
                             for m in self.members)
    self.preprocessing: Preprocessing = max((m.model.encoder.preprocessing for m in self.members),
                                            key=lambda p: p.size)

  @classmethod
  def load(cls, path: str | Sequence[str], warn: Callable[[str], None] = lambda s: None,
           rerank: bool = True) -> "Captioner":
    """A workdir's best-on-dev checkpoint (or a step dir); several paths make an ensemble (CheckpointError, one
    line naming both, when two members differ in vocabulary). One that cannot be read is reported
    through `warn` in one line and the next best is used; CheckpointError (one line) when none can be read.
    With `rerank`, the first member's workdir's consensus index (if any) re-ranks beam search."""
    first, *others = [cls._load_one(p, warn) for p in ([path] if isinstance(path, str) else path)]
    cap = cls(first.model, first.variables, first.vocab, first.config, first.step, first.source, others)
    cap.warnings = [w for m in (first, *others) for w in m.warnings]
    try:
      index = consensus_index(cap) if rerank else None
    except consensus.ConsensusError as e:
      cap.warnings.append(f"warning: {e}; captions are not re-ranked")
      warn(cap.warnings[-1])
      index = None
    cap.reranker = consensus.Reranker(index, cap.vocab) if index is not None else None
    return cap

  @classmethod
  def _load_one(cls, path: str, warn: Callable[[str], None]) -> "Captioner":
    warnings: list[str] = []

    def note(message: str) -> None:
      warnings.append(message)
      warn(message)
    state, meta, source = checkpoint.load(path, note)
    config = ml_collections.ConfigDict(checkpoint.with_added_fields(meta["config"]))
    vocab = Vocab(meta["vocab"])
    model = make_model(config.model, len(vocab))
    if model.encoder.preprocessing.to_dict() != Preprocessing.from_dict(meta["preprocessing"]).to_dict():
      raise CheckpointError(f"{source}: encoder preprocessing in the checkpoint differs from the code's")
    out = model.decoder.vocab_size
    saved = np.shape(state["params"]["decoder"]["out"]["kernel"])[-1]
    if saved != out:
      raise CheckpointError(f"{source}: vocabulary has {out} tokens but the decoder outputs {saved}")
    variables = {"params": jax.device_put(state["params"]), "batch_stats": jax.device_put(state["batch_stats"])}
    cap = cls(model, variables, vocab, config, meta["step"], source)
    cap.warnings = warnings  # checkpoints passed over because they could not be read (one line each)
    return cap

  def encoder_variables(self) -> dict:
    """This checkpoint's encoder weights (params and batch statistics): what its grids depend on."""
    return {k: self.variables[k].get("encoder", {}) for k in ("params", "batch_stats")}

  def preprocess(self, image: images_lib.ImageInput, name: str | None = None) -> np.ndarray:
    """The uint8 pixels [S, S, 3] the encoder sees (the training pipeline's decode and resize). In an ensemble,
    at its largest encoder input: an encoder that takes fewer resizes them again, so it sees the image resized
    twice where training resized it once."""
    return images_lib.resize(images_lib.read_image(image, name), self.preprocessing.size)

  def encode(self, pixels: np.ndarray) -> jax.Array | tuple[jax.Array, ...]:
    """The grid [B, h, w, C] of pixels [B, S, S, 3] (S = preprocessing.size) when every member shares one
    encoder; else a tuple of grids, one per member (each distinct encoder runs once)."""
    grids = {}
    for i in self._encoder_of:
      if i not in grids:
        m = self.members[i]
        size = m.model.encoder.preprocessing.size
        x = pixels if size == pixels.shape[1] else np.stack([images_lib.resize(p, size) for p in pixels])
        grids[i] = m._encode(m.variables, jnp.asarray(x))
    return grids[0] if len(grids) == 1 else tuple(grids[i] for i in self._encoder_of)

  def encode_pixels(self, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray | tuple:
    """Feature grids [N, h, w, C] (a tuple, one per member, when members are on different encoders) for
    preprocessed pixels [N, S, S, 3], encoded in batches of `batch_size` (default: all N at once; the last batch
    padded, so one compilation per batch size)."""
    batch_size = batch_size or len(pixels)
    parts = []
    for i in range(0, len(pixels), batch_size):
      n = len(pixels[i:i + batch_size])
      parts.append(grids_lib.map_grids(lambda g: np.asarray(g)[:n],  # noqa: B023
                                       self.encode(batching.pad_rows(pixels[i:i + batch_size], batch_size))))
    return grids_lib.map_grids(lambda *gs: np.concatenate(gs), *parts)

  def decode(self, grids: np.ndarray | tuple, beam_size: int = 1, max_len: int = 20, alpha: float = 0.0,
             batch_size: int | None = None) -> list[Result]:
    """Captions for feature grids [N, h, w, C] (from `encode_pixels`), through `evaluator.decode_grids` in
    batches of `batch_size` (default: all N at once). One compilation per (batch size, beam, max_len)."""
    settings = evaluator.Settings(beam_size, max_len, alpha, batch_size or grids_lib.rows(grids), attention=True)
    out = evaluator.decode_grids(self.decoders, self.decoder_params, grids, settings, self.reranker)
    # Attention maps are over the first attending member's grid (`jaxcap.decode`).
    h, w = next((g.shape[1:3] for m, g in zip(self.members, member_grids(self.decoders, grids))
                 if m.mode == "attend"), (0, 0))
    results = []
    for tokens, scores, log_probs, alphas in zip(out.tokens, out.scores, out.log_probs, out.alphas):
      beams = [Beam(self.vocab.to_text(t), float(s), float(lp)) for t, s, lp in zip(tokens, scores, log_probs)]
      best = tokens[0]
      n_words = next((t for t, tok in enumerate(best) if tok in (END_ID, PAD_ID)), len(best))
      att = alphas[0, :n_words].reshape(n_words, h, w) if alphas.shape[-1] else None  # (no member attends)
      results.append(Result(beams[0].caption, beams[0].caption.split(), beams, att))
    return results

  def caption_pixels(self, pixels: np.ndarray, beam_size: int = 1, max_len: int = 20, alpha: float = 0.0,
                     batch_size: int | None = None) -> list[Result]:
    """Captions for preprocessed pixels [N, S, S, 3], encoded and decoded in batches of `batch_size` (default:
    all N at once). One compilation per (batch size, beam, max_len)."""
    batch_size = batch_size or len(pixels)
    return self.decode(self.encode_pixels(pixels, batch_size), beam_size, max_len, alpha, batch_size)

  def caption(self, images: Sequence[images_lib.ImageInput], beam_size: int = 1, max_len: int = 20,
              alpha: float = 0.0, batch_size: int = 16) -> list[Result]:
    """Captions for images (paths, bytes, PIL images, arrays). Raises ImageError for an unreadable one;
    use `caption_pixels` with `preprocess` to handle errors per image."""
    pixels = np.stack([self.preprocess(im) for im in images])
    return self.caption_pixels(pixels, beam_size, max_len, alpha, min(batch_size, len(pixels)))


def same_encoder(a: Captioner, b: Captioner) -> bool:
  """Whether a's encoder gives b's grids: the same module, input size and weights."""
  if a.model.encoder != b.model.encoder:
    return False
  wa, wb = a.encoder_variables(), b.encoder_variables()
  return jax.tree.structure(wa) == jax.tree.structure(wb) and all(
      x is y or np.array_equal(x, y) for x, y in zip(jax.tree.leaves(wa), jax.tree.leaves(wb)))


def check_ensemble(a: Captioner, b: Captioner) -> None:
  """Raises CheckpointError (one line naming both checkpoints) unless b can join a's ensemble: the same vocabulary
  (word ids are averaged position by position)."""
  def refuse(what: str) -> None:
    raise CheckpointError(f"cannot ensemble {a.source} and {b.source}: {what}")
  if a.vocab.tokens != b.vocab.tokens:
    diff = next((i for i, (x, y) in enumerate(zip(a.vocab.tokens, b.vocab.tokens)) if x != y), None)
    where = f"first at id {diff}: {a.vocab.tokens[diff]!r} vs {b.vocab.tokens[diff]!r}" if diff is not None else \
        "one extends the other"
    refuse(f"their vocabularies differ ({len(a.vocab)} vs {len(b.vocab)} tokens, {where}); ensemble members "
           "must be trained with the same vocabulary")


def consensus_path(source: str) -> str | None:
  """Where the consensus index of the checkpoint at `source` lives: in its workdir (None for a step directory
  outside a workdir)."""
  workdir = checkpoint.workdir_of(source)
  return os.path.join(workdir, consensus.FILENAME) if workdir else None


def encoder_id(captioner: Captioner) -> str:
  """What a consensus index's grids must match: the first member's encoder, input size and a digest of its
  weights (a checkpoint fine-tuned after the index was built has other grids)."""
  m = captioner.members[0]
  digest, weights = hashlib.sha1(), m.encoder_variables()
  for k in ("params", "batch_stats"):  # in this order, not jax.tree's sorted one: the digest indexes store
    for leaf in jax.tree.leaves(weights[k]):
      digest.update(np.ascontiguousarray(leaf).tobytes())
  return f"{m.config.model.encoder}-{m.model.encoder.preprocessing.size}-{digest.hexdigest()[:12]}"


def consensus_index(captioner: Captioner) -> consensus.Index | None:
  """The consensus index in the workdir of a Captioner's first member, if built; ConsensusError when it cannot be
  read or was built from other grids than that member's encoder gives."""
  path = consensus_path(captioner.source)
  if path is None or not os.path.exists(path):
    return None
  return consensus.load_checked(path, encoder_id(captioner), captioner.source)
