"""The self-critical regime's feed: the cached features, batched by train image (not by caption)."""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from jaxcap import objectives
from jaxcap.data import batching
from jaxcap.data import vocab as vocab_lib
from jaxcap.feeds.cached import CachedFeatures
from jaxcap.feeds.host import HostBatches
from jaxcap.models.caption_model import CaptionModel


class ImageBatches(HostBatches):
  """Batches of train images: each image's grid (a row of `train_rows`) and its row index (`image_index`, what
  the reward looks its references up by); epoch e's image order depends only on (seed, e)."""

  def __init__(self, train_rows, batch_size: int, seed: int):
    self.train_rows = train_rows
    n_images = len(train_rows)
    self.schedule = batching.Schedule(np.zeros(n_images, np.int32), batch_size, seed, bucket=False)
    self.steps_per_epoch = self.schedule.steps_per_epoch

  def batches(self, start: int, stop: int) -> Iterator[dict]:
    mine = batching.process_rows(self.schedule.batch_size, jax.process_index(), jax.process_count())
    for step in range(start, stop):
      idx = self.schedule.batch(step)[mine]
      yield {"grid": self.train_rows[idx], "image_index": idx.astype(np.int32)}


class SelfCritical(CachedFeatures):
  """Self-critical sequence training on the cached features: batches of train images (`ImageBatches`), each
  image's captions sampled in the step and rewarded by CIDEr-D (`objectives.CiderReward`); starts from a
  cross-entropy checkpoint (`train.init_from`). Host-fed: its step calls back to the host for the rewards
  anyway."""
  trainable, inputs = ("decoder",), "grid"
  device_resident = False

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    super().__init__(config, builder, model, variables, vocab, train, dev, log, verbose)
    [self._objective] = self.step_objectives(config, objectives.CiderReward(vocab, train)).values()
    self.source = ImageBatches(self.source.train_rows, config.train.batch_size, config.seed)

  @staticmethod
  def step_objectives(config, reward=None, mesh=None) -> dict[str, objectives.Objective]:
    """`mesh`: the devices the batch is sharded over (default: the trainer's, every device)."""
    reward = reward or (lambda tokens, index: np.zeros(tokens.shape[:2], np.float32))
    return {"step": objectives.self_critical(config, reward, mesh)}
