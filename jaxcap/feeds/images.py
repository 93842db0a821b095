"""The fine-tune regime's feeds: end to end from images, the encoder trained too. Two ways to feed it, picked by
`FineTune.resolve` (`train.image_feed`): `ImageStream`, images decoded and resized by tf.data every epoch, or
`DecodedImages`, decoded once into a uint8 array (on the devices where it fits)."""
from __future__ import annotations

import time
from typing import Iterator

import jax

from jaxcap import augment, feature_cache, memory, objectives, train_state
from jaxcap.data import batching, pipeline
from jaxcap.data import vocab as vocab_lib
from jaxcap.feeds.host import Feed, HostBatches
from jaxcap.feeds.rows import TrainRows
from jaxcap.grids import SplitInputs
from jaxcap.models.caption_model import CaptionModel, encode_fn


class FineTune(Feed):
  """What the fine-tune feeds share: what trains (encoder and decoder; the encoder from
  `train.finetune_from_step`, with its own learning rate), the objectives, and validation on images encoded by
  the current encoder. `resolve` picks the feed; the subclass sets its `source` of train batches."""
  trainable, inputs = ("encoder", "decoder"), "image"

  @classmethod
  def resolve(cls, config, builder, model: CaptionModel, train: tuple[list[str], dict], log=print):
    """The fine-tune feed `train.image_feed` picks: "decoded" (`DecodedImages`), "stream" (`ImageStream`) or
    "auto": decoded when the train images as uint8 fit the host budget (`memory.host_budget`), else streamed;
    logged with the sizes."""
    want = config.train.image_feed
    size = model.encoder.preprocessing.size
    # Every process of a multi-host job must pick the same feed: the smallest budget decides.
    need, budget = len(train[0]) * size * size * 3, memory.process_min(memory.host_budget(config))
    decoded = want == "decoded" or (want == "auto" and need <= budget)
    how = ("decoded once into uint8 (no per-epoch decode; augmentation on the devices)" if decoded else
           "tf.data (decoded and resized every epoch)")
    log(f"image feed: {how}; train images {len(train[0])} x {size}x{size}x3 = {memory.gb(need)} "
        f"{'<=' if need <= budget else '>'} host budget {memory.gb(budget)}; train.image_feed={want}")
    return DecodedImages if decoded else ImageStream

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    self.config, self.builder, self.model, self.vocab = config, builder, model, vocab
    self._frozen, self._training = self.step_objectives(config).values()
    self._encode = encode_fn(model)

  @staticmethod
  def step_objectives(config) -> dict[str, objectives.Objective]:
    return {"step_frozen_encoder": objectives.cross_entropy(config, objectives.image_forward(False)),
            "step_train_encoder": objectives.cross_entropy(config, objectives.image_forward(True))}

  def objective(self, step: int) -> objectives.Objective:
    return self._training if step >= self.config.train.finetune_from_step else self._frozen

  def eval_inputs(self, split: str, variables: dict, limit: int = 0) -> SplitInputs:
    """The split's images encoded with the current encoder `variables` (what a Captioner would see)."""
    return feature_cache.encode_split(lambda x: self._encode(variables, x), self.builder, split,
                                      self.model.encoder.preprocessing, self.config.train.eval_batch_size, limit)


class StreamedImages(HostBatches):
  """tf.data's train batches (`pipeline.train_batches`): images decoded and resized every epoch, optionally
  augmented, in tf.data's shuffled order; this process reads its slice of the split."""

  def __init__(self, config, builder, model: CaptionModel, vocab: vocab_lib.Vocab, train: tuple[list[str], dict]):
    self.config, self.builder, self.model, self.vocab = config, builder, model, vocab
    self.steps_per_epoch = sum(len(train[1][n]) for n in train[0]) // config.train.batch_size

  def batches(self, start: int, stop: int) -> Iterator[dict]:
    c, n_proc = self.config, jax.process_count()
    mine = batching.process_rows(c.train.batch_size, jax.process_index(), n_proc)
    per_proc = mine.stop - mine.start
    it = pipeline.train_batches(self.builder, self.vocab, batch_size=per_proc, max_len=c.data.max_len,
                                preprocessing=self.model.encoder.preprocessing, augment=c.train.augment,
                                seed=c.seed, process_index=jax.process_index(), process_count=n_proc,
                                skip_examples=start * per_proc)
    for _ in range(start, stop):
      yield next(it)


class ImageStream(FineTune):
  """End to end from images through tf.data (`StreamedImages`): the fine-tune feed when the decoded images would
  not fit in memory."""

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    super().__init__(config, builder, model, variables, vocab, train, dev, log, verbose)
    self.source = StreamedImages(config, builder, model, vocab, train)


class DecodedImages(FineTune):
  """End to end from images decoded once: every train image decoded and resized (by the tf.data pipeline, so
  the pixels are tf.data's) into one uint8 array [N, S, S, 3] cached on disk (`feature_cache.decode`, next to
  the features); it goes to the devices where it fits (`TrainRows`, by `train.feed_placement`), else batches
  are gathered from it in host memory. `train.augment` crops and jitters each batch on the devices, inside the
  step (`jaxcap.augment`, keyed by the step). The encoder normalizes the uint8 batch in the model, as it does
  tf.data's. The order is `TrainRows`' (a pure function of the step), not tf.data's shuffle, and, like tf.data's,
  not length-bucketed: the encoder's cost does not depend on the caption length, and batches sorted by length
  are batches of alike captions (on the synthetic data, of one template)."""

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    super().__init__(config, builder, model, variables, vocab, train, dev, log, verbose)
    preprocessing = model.encoder.preprocessing
    self.directory = feature_cache.pixels_directory(
        config.data.feature_cache_dir, getattr(builder, "cache_id", builder.data_dir), preprocessing.size)
    t0 = time.time()
    names, rows = feature_cache.decode(builder, "train", preprocessing, self.directory,
                                       config.train.eval_batch_size, verbose)
    if names != train[0]:
      raise train_state.TrainError(f"{self.directory}: the decoded images' order differs from the dataset; "
                                   f"delete it to rebuild")
    log(f"decoded images ready in {time.time() - t0:.0f}s: {rows.path} {rows.shape} uint8")
    self.source = TrainRows(config, rows, train, vocab, log, {}, "images", key="image", length_bucketed=False)

  def draw(self, static, mesh):
    """The batch of step `step` (gathered on the devices, or sliced from the copied host batches), augmented
    there when `train.augment`."""
    return augmented(self.config, self.source.draw(static, mesh))


def augmented(config, draw):
  """`draw` with each batch's images cropped and jittered on the devices (`jaxcap.augment`, keyed by (seed,
  step)) when `train.augment`; `draw` itself otherwise."""
  if not config.train.augment:
    return draw
  seed = config.seed

  def draw_augmented(args, i, step):
    batch = draw(args, i, step)
    return {**batch, "image": augment.augment(batch["image"], augment.key(seed, step))}

  return draw_augmented
