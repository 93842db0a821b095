"""`Captioner`: a checkpoint directory in, captions out. The CLIs and the Streamlit app use it; nothing else
knows how to load a checkpoint.

    cap = Captioner.load("workdirs/flickr8k_lite0")          # a workdir (its best-on-dev checkpoint) or a step dir
    [result] = cap.caption(["photo.jpg"], beam_size=3)
    result.caption, result.beams, result.attention           # attention: [words, h, w] (attend mode)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxcap import decode
from jaxcap.data import batching
from jaxcap.data import images as images_lib
from jaxcap.data.preprocessing import Preprocessing
from jaxcap.data.vocab import END_ID, PAD_ID, Vocab
from jaxcap.models.captioner import Captioner as CaptionerModule
from jaxcap.models.captioner import make_captioner


class CheckpointError(Exception):
  """A checkpoint path that cannot be loaded; one line naming the path."""


@dataclasses.dataclass
class Beam:
  caption: str
  score: float          # log-probability / length penalty (the ranking score)
  log_prob: float


@dataclasses.dataclass
class Result:
  caption: str
  words: list[str]
  beams: list[Beam]
  attention: np.ndarray | None   # [len(words), h, w] for the best caption, attend mode only


def find_checkpoint(path: str) -> tuple[str, int]:
  """(manager directory, step): a workdir's best checkpoint, else its latest; or an explicit step dir."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: checkpoint directory does not exist (train one with `python train.py`)")
  for sub in ("best", "checkpoints"):
    d = os.path.join(path, sub)
    if os.path.isdir(d):
      step = ocp.CheckpointManager(d).latest_step()
      if step is not None:
        return d, step
  parent, name = os.path.split(path.rstrip("/"))
  if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return parent, int(name)
  raise CheckpointError(f"{path}: no jaxcap checkpoint found (expected best/ or checkpoints/ of a workdir, "
                        f"or a step directory)")


class Captioner:
  """Loads once; captions PIL images, numpy arrays, file paths or bytes, greedy or beam search."""

  def __init__(self, model: CaptionerModule, variables: dict, vocab: Vocab, config: ml_collections.ConfigDict,
               step: int = 0, source: str = ""):
    self.model, self.variables, self.vocab, self.config = model, variables, vocab, config
    self.step, self.source = step, source
    self.preprocessing: Preprocessing = model.encoder.preprocessing
    self.mode = model.decoder.mode
    self._encode = jax.jit(lambda v, x: model.apply(v, x, method=CaptionerModule.encode))

  @classmethod
  def load(cls, path: str) -> "Captioner":
    directory, step = find_checkpoint(path)
    try:
      restored = ocp.CheckpointManager(directory).restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises many types for damaged or foreign directories
      raise CheckpointError(f"{directory}/{step}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    meta, state = restored["meta"], restored["state"]
    config = ml_collections.ConfigDict(meta["config"])
    vocab = Vocab(meta["vocab"])
    model = make_captioner(config.model, len(vocab))
    if model.encoder.preprocessing.to_dict() != Preprocessing.from_dict(meta["preprocessing"]).to_dict():
      raise CheckpointError(f"{directory}/{step}: encoder preprocessing in the checkpoint differs from the code's")
    out = model.decoder.vocab_size
    saved = np.shape(state["params"]["decoder"]["out"]["kernel"])[-1]
    if saved != out:
      raise CheckpointError(f"{directory}/{step}: vocabulary has {out} tokens but the decoder outputs {saved}")
    variables = {"params": jax.device_put(state["params"]), "batch_stats": jax.device_put(state["batch_stats"])}
    return cls(model, variables, vocab, config, step, f"{directory}/{step}")

  def preprocess(self, image: images_lib.ImageInput, name: str | None = None) -> np.ndarray:
    """The exact uint8 pixels [S, S, 3] the encoder sees (the training pipeline's decode and resize)."""
    return images_lib.resize(images_lib.read_image(image, name), self.preprocessing.size)

  def encode(self, pixels: np.ndarray) -> jax.Array:
    return self._encode(self.variables, jnp.asarray(pixels))

  def caption_pixels(self, pixels: np.ndarray, beam_size: int = 1, max_len: int = 20,
                     alpha: float = 0.0) -> list[Result]:
    """Captions for a batch of preprocessed pixels [B, S, S, 3]. One compilation per (B, beam, max_len)."""
    grid = self.encode(pixels)
    dparams = self.variables["params"]["decoder"]
    h, w = grid.shape[1:3]
    if beam_size <= 1:
      tokens, alphas = decode.greedy(self.model.decoder, dparams, grid, max_len)
      tokens, alphas = np.asarray(tokens)[:, None], np.asarray(alphas)[:, None]
      scores = log_probs = np.zeros(tokens.shape[:2], np.float32)
    else:
      tokens, scores, log_probs, alphas = (np.asarray(a) for a in decode.beam_search(
          self.model.decoder, dparams, grid, beam_size, max_len, alpha))
    results = []
    for i in range(len(pixels)):
      beams = [Beam(self.vocab.decode(tokens[i, j]), float(scores[i, j]), float(log_probs[i, j]))
               for j in range(tokens.shape[1])]
      best = tokens[i, 0]
      n_words = next((t for t, tok in enumerate(best) if tok in (END_ID, PAD_ID)), len(best))
      att = alphas[i, 0, :n_words].reshape(n_words, h, w) if self.mode == "attend" else None
      results.append(Result(beams[0].caption, beams[0].caption.split(), beams, att))
    return results

  def caption(self, images: Sequence[images_lib.ImageInput], beam_size: int = 1, max_len: int = 20,
              alpha: float = 0.0, batch_size: int = 16) -> list[Result]:
    """Captions for images (paths, bytes, PIL images, arrays). Raises ImageError for an unreadable one;
    use `caption_pixels` with `preprocess` to handle errors per image."""
    pixels = np.stack([self.preprocess(im) for im in images])
    out = []
    for i in range(0, len(pixels), batch_size):
      chunk = pixels[i:i + batch_size]
      n = len(chunk)
      if len(pixels) > batch_size:  # one compiled shape per batch size
        chunk = batching.pad_rows(chunk, batch_size)
      out += self.caption_pixels(chunk, beam_size, max_len, alpha)[:n]
    return out

  def warm_up(self, beam_sizes: Sequence[int] = (1, 3), max_len: int = 20) -> None:
    """Compiles the encoder and decoders for batch 1 and runs the resize once (TF's first call is slow), so
    the first real caption is not a compile."""
    size = self.preprocessing.size
    self.preprocess(np.zeros((size + 1, size + 1, 3), np.uint8))
    blank = np.zeros((1, size, size, 3), np.uint8)
    for k in beam_sizes:
      self.caption_pixels(blank, k, max_len)
