"""Train data as rows of one array [N, ...], a row per train image (the cached regime's grids, the decoded
fine-tune feed's pixels), and the batches drawn from it.

`TrainRows` batches caption indices (`batching.Schedule`, length-bucketed where it applies) and draws each
caption's image row. Where the rows live is chosen once, when it is built: on the devices (`device_feed`, by
`train.feed_placement`), where each step gathers its batch; else in the host store `feature_store` picks, the one
place that choice is made and logged with the sizes: host memory where the grids fit the budget, else streamed
from the on-disk cache batch by batch (bounded host memory at any dataset size; in a multi-host job each
process reads only the rows of its slice of each batch). Both host stores give the same batches.
"""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from jaxcap import device_feed, feature_cache, memory, train_state
from jaxcap.data import batching
from jaxcap.data import vocab as vocab_lib
from jaxcap.feeds.host import HostBatches


def feature_store(config, rows: dict[str, feature_cache.FeatureRows], log=print) -> dict:
  """The cached regime's grids, split -> array: in host memory (`np.ndarray`) or read from disk per batch
  (`FeatureRows`), by `train.feature_store` ("auto": memory when they fit `train.feature_memory_gb`, default half
  the available memory). Logs the choice with the sizes."""
  if not rows:
    return {}
  t = config.train
  need = sum(r.nbytes for r in rows.values())
  budget = memory.host_budget(config)
  mode = t.feature_store
  if mode not in ("auto", "memory", "stream"):
    raise train_state.TrainError(f"train.feature_store must be auto, memory or stream, got {mode!r}")
  if mode == "auto":
    mode = "memory" if need <= budget else "stream"
  sizes = " + ".join(f"{s} {memory.gb(r.nbytes)} ({len(r)} grids)" for s, r in rows.items())
  why = (f"<= budget {memory.gb(budget)}" if need <= budget else f"> budget {memory.gb(budget)}") + (
      "" if t.feature_store == "auto" else f"; train.feature_store={t.feature_store}")
  log(f"feature store: {'host memory' if mode == 'memory' else 'streamed from disk'}: {sizes} = "
      f"{memory.gb(need)} {why}")
  return {s: (r.load() if mode == "memory" else r) for s, r in rows.items()}


def grid_batches(grids, pairs: batching.CaptionPairs, schedule: batching.Schedule, max_len: int, start: int,
                 stop: int, process_index: int = 0, process_count: int = 1, key: str = "grid") -> Iterator[dict]:
  """This process's slice of the batches of steps start..stop-1: `key` (grids [B, h, w, C], or images) from
  `grids` (an array or `FeatureRows`: only these rows are read), tokens and mask cut to the batch's padded
  length."""
  mine = batching.process_rows(schedule.batch_size, process_index, process_count)
  for step in range(start, stop):
    idx = schedule.batch(step)
    length = schedule.padded_length(idx, max_len)
    idx = idx[mine]
    tokens = pairs.tokens[idx, :length]
    yield {key: grids[pairs.image_index[idx]], "tokens": tokens,
           "mask": (tokens != vocab_lib.PAD_ID).astype(np.float32)}


class TrainRows(HostBatches):
  """The train `rows` (an on-disk `FeatureRows`) and their batches: `batching.Schedule` batches of caption
  indices, each caption's image row drawn as `key`. Placed on the devices (`self.device`, a
  `device_feed.DeviceCaptions`: `row_kind` names the rows in its log) when `device_resident` and they fit, else
  in the host store (`self.train_rows`) with the `host_also` splits; `self.store` is that store ({split: array or
  FeatureRows}). `length_bucketed`: whether `train.length_bucketing` applies; `per_image` > 0: image-major
  batches of that many captions per image (`batching.ImageMajorSchedule`)."""

  def __init__(self, config, rows: feature_cache.FeatureRows, train: tuple[list[str], dict],
               vocab: vocab_lib.Vocab, log, host_also: dict, row_kind: str, key: str = "grid",
               device_resident: bool = True, length_bucketed: bool = True, per_image: int = 0):
    self.config, self.key = config, key
    t = config.train
    bucket = t.length_bucketing and length_bucketed
    self.pairs = batching.caption_pairs(train[0], train[1], vocab, config.data.max_len)
    self.schedule = batching.make_schedule(self.pairs, t.batch_size, config.seed, bucket, per_image)
    self.steps_per_epoch = self.schedule.steps_per_epoch
    where = device_feed.placement(config, rows.nbytes, self.pairs, jax.devices(), log, row_kind) if (
        device_resident) else "host"
    # On the devices, the host keeps no train rows: they are read from disk once, straight into the devices.
    self.store = feature_store(config, {"train": rows, **host_also} if where == "host" else host_also, log)
    self.train_rows = self.store.get("train", rows)
    self.device = None
    if where != "host":
      self.device = device_feed.DeviceCaptions(
          rows, self.pairs, t.batch_size, config.seed, bucket, config.data.max_len,
          shards=1 if where == "replicate" else jax.device_count(), n_devices=jax.device_count(),
          steps_per_dispatch=t.steps_per_dispatch, key=key, per_image=per_image)
      self.steps_per_epoch = self.device.steps_per_epoch

  def dispatches(self, chunks: list[tuple[int, int]], mesh):
    return self.device.dispatches(chunks, mesh) if self.device else super().dispatches(chunks, mesh)

  def draw(self, static, mesh):
    return self.device.draw(static, mesh) if self.device else super().draw(static, mesh)

  def batches(self, start: int, stop: int) -> Iterator[dict]:
    return grid_batches(self.train_rows, self.pairs, self.schedule, self.config.data.max_len, start, stop,
                        jax.process_index(), jax.process_count(), self.key)
