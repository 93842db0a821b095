"""The top regime's feed: the encoder's last `train.top_stages` stages train with the decoder, on its trunk (the
output of the layers below them) encoded once into the feature store.

Fine-tuning end to end pays the whole encoder's forward and backward pass for every caption. Fine-tuning barely
changes the lower layers, so they are frozen and their output cached once per image (float16, keyed by those
layers' weights, `feature_cache.directory_for`); each step runs only the top, in inference mode for
BatchNorm (frozen statistics, as fine-tuning with small batches does), once per image of an image-major batch
(`train.captions_per_image` captions of each image side by side, `batching.ImageMajorSchedule`), and shares the
grid among the image's captions. The trunk rows go where the cached regime's grids go (`TrainRows`: on the
devices where they fit, with K steps per dispatch, else host memory or streamed from disk).

A checkpoint holds the whole encoder (its top trained), so inference runs the whole encoder on images as always.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcap import feature_cache, objectives, train_state
from jaxcap.data import tfds_builder
from jaxcap.data import vocab as vocab_lib
from jaxcap.feeds.host import Feed
from jaxcap.feeds.rows import TrainRows
from jaxcap.grids import SplitInputs
from jaxcap.models import encoders
from jaxcap.models.caption_model import CaptionModel, make_model


def top_modules(encoder, start: int) -> tuple[str, ...]:
  """The encoder's parameter modules at layers `start` and above (what the top regime trains)."""
  size, key = encoder.preprocessing.size, jax.random.key(0)

  def top_variables():
    images = jnp.zeros((1, size, size, 3), jnp.uint8)
    trunk = encoder.apply(encoder.init(key, images, span=(0, start)), images, span=(0, start))
    return encoder.init(key, trunk, span=(start, encoder.num_layers))

  top = jax.eval_shape(top_variables)
  return tuple(top["params"])


def cut(config) -> tuple[int, tuple[str, ...]]:
  """(the first layer of the top, the top's encoder modules) for `train.top_stages` of the config's encoder; a
  one-line TrainError when out of range."""
  encoder = make_model(config.model, 1).encoder
  try:
    start = encoders.top_start(encoder, config.train.top_stages)
  except ValueError as e:
    raise train_state.TrainError(str(e)) from None
  return start, top_modules(encoder, start)


class TopOfEncoder(Feed):
  """The top `train.top_stages` stages of the encoder and the decoder, trained on the cached trunk (module
  docstring); starts from `train.init_from` (a cross-entropy run) when set; the encoder's top has its own
  learning rate (`train.encoder_learning_rate`). Validation runs the current top on the cached dev trunks."""
  inputs = "trunk"

  @classmethod
  def trainable_for(cls, config) -> tuple[str, ...]:
    return ("decoder", *(f"encoder/{m}" for m in cut(config)[1]))

  @staticmethod
  def step_objectives(config) -> dict[str, objectives.Objective]:
    start = cut(config)[0]
    return {"step": objectives.cross_entropy(config, objectives.top_forward(
        start, max(config.train.captions_per_image, 1)))}

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    self.config, self.builder, self.model = config, builder, model
    encoder, t = model.encoder, config.train
    self.start, top = cut(config)
    self.trainable = self.trainable_for(config)
    self.enc_vars = feature_cache.encoder_variables(variables)
    trunk_vars = {col: {m: v for m, v in tree.items() if m not in top} for col, tree in self.enc_vars.items()}
    self.directory = feature_cache.directory_for(config, builder, encoder.preprocessing.size, trunk_vars,
                                                 trunk=self.start)
    per_image = t.captions_per_image
    [self._objective] = self.step_objectives(config).values()
    self._top = jax.jit(lambda v, x: model.apply(v, x, self.start, method=CaptionModel.encode_top))
    t0 = time.time()
    names, train_rows = self._trunks("train", verbose)
    if names != train[0]:
      raise train_state.TrainError(f"trunk cache order differs from the dataset; delete {self.directory}")
    self.dev_names, dev_rows = self._trunks("dev", verbose)
    self.dev_caps = dev[1]
    log(f"trunk ready in {time.time() - t0:.0f}s: {self.directory} train {train_rows.shape} (layers below "
        f"{self.start} of {encoder.num_layers}; training {len(top)} encoder modules, {top[0]}..{top[-1]})")
    self.source = TrainRows(config, train_rows, train, vocab, log, {"dev": dev_rows}, "trunks", key="trunk",
                            length_bucketed=per_image == 0, per_image=per_image)
    self.dev_trunks = self.source.store["dev"]

  def _trunks(self, split: str, verbose: bool = False):
    return feature_cache.extract(self.builder, split, self.model.encoder, self.enc_vars, self.directory,
                                 self.config.train.eval_batch_size, verbose=verbose, stop=self.start)

  def objective(self, step: int) -> objectives.Objective:
    return self._objective

  def eval_inputs(self, split: str, variables: dict, limit: int = 0) -> SplitInputs:
    """The split's grids from its cached trunks through the current top (`variables`)."""
    if split == "dev":
      names, trunks, caps = self.dev_names, self.dev_trunks, self.dev_caps
    else:
      (names, trunks), caps = self._trunks(split), tfds_builder.split_captions(self.builder, split)[1]
    names = names[:limit or None]
    b = self.config.train.eval_batch_size
    grids = [np.asarray(self._top(variables, np.asarray(trunks[i:i + b]))) for i in range(0, len(names), b)]
    return SplitInputs(names, np.concatenate(grids), [caps[n] for n in names])
