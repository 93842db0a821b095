"""Feeds: one class per way of feeding the train step. `make_feed` is the one place the config's regime is read.

A feed knows
  - `steps_per_epoch`;
  - `trainable`: the parameter groups the step differentiates;
  - `inputs`: what its batches carry besides captions ("grid": cached features, "image": pixels);
  - `objective(step)`: what the step at `step` minimizes, one of `step_objectives(config)` (one jitted step
    each);
  - `batches(start, stop)`: this process's batches for steps start..stop-1, a pure function of the step, so a
    resumed run sees exactly the batches the uninterrupted one would;
  - `eval_inputs(split, variables, limit)`: what validation decodes (`grids.SplitInputs`);
  - `dispatches(chunks, mesh)` and `draw(static, mesh)`: what the loop runs, one jitted call per chunk of steps
    (`chunks`): (static, args) per chunk, and draw(static, mesh)(args, i, step) -> the batch of the chunk's i-th
    step inside that call. `HostBatches` gives them to every feed from `batches`; the train data of a
    `TrainRows` feed (cached grids, decoded pixels) may instead be resident on the devices (`jaxcap.device_feed`).
Every feed is built as Feed(config, builder, model, variables, vocab, train, dev, log, verbose). Adding a way of
training is one new class here and one entry in FEEDS; the loop (`train_lib`) never asks which one it has. A
regime fed more than one way (fine-tune: `DecodedImages` or `ImageStream`, by `train.image_feed`) picks one in
its class's `resolve`, which `make_feed` calls with the data's sizes at hand.

`CachedFeatures` reads its grids from the store `feature_store` picks, the one place that choice is made and
logged with the sizes: host memory where the train and dev grids fit the budget, else streamed from the on-disk
cache batch by batch (bounded host memory at any dataset size; in a multi-host job each process reads only the
rows of its slice of each batch). Both give the same batches. Before that, `device_feed.placement` may put the
train data on the devices instead (`train.feed_placement`), where each step gathers its batch.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from typing import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcap import augment, device_feed, feature_cache, train_state
from jaxcap.cider import CiderD
from jaxcap.data import batching, pipeline, tfds_builder
from jaxcap.data import vocab as vocab_lib
from jaxcap.grids import SplitInputs
from jaxcap.models.caption_model import CaptionModel, encode_fn

def prefetch(items: Iterator, size: int = 2) -> Iterator:
  """Runs `items` in a background thread, `size` ahead (host batching + device_put overlap the step)."""
  q: queue.Queue = queue.Queue(size)
  done = object()

  def run():
    try:
      for item in items:
        q.put(item)
    except BaseException as e:  # handed to the consumer, raised there
      q.put(e)
    q.put(done)

  threading.Thread(target=run, daemon=True).start()
  while (item := q.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item


def chunks(start: int, stop: int, k: int, objective) -> list[tuple[int, int]]:
  """(first step, steps) of each dispatch of steps start..stop-1: at most k steps, ending on multiples of k (the
  log, eval and save intervals are multiples of k, so they fall on dispatch ends, and a resumed run dispatches
  as the straight one did), and cut where `objective(step)` changes (one objective per jitted call)."""
  out, step = [], start
  while step < stop:
    end = min((step // k + 1) * k, stop)
    end = next((s for s in range(step + 1, end) if objective(s) is not objective(step)), end)
    out.append((step, end - step))
    step = end
  return out


def stack(batches: list[dict]) -> dict:
  """Batches stacked [n, B, ...], each cut to the longest caption of the n (zero padding: a masked <pad>)."""
  if len(batches) == 1:
    return {k: v[None] for k, v in batches[0].items()}  # a view: no copy
  out = {}
  for k in batches[0]:
    vs = [b[k] for b in batches]
    if vs[0].ndim > 1 and len({v.shape[1] for v in vs}) > 1:
      width = max(v.shape[1] for v in vs)
      vs = [np.pad(v, [(0, 0), (0, width - v.shape[1])] + [(0, 0)] * (v.ndim - 2)) for v in vs]
    out[k] = np.stack(vs)
  return out


class HostBatches:
  """Every feed's default dispatches: its host batches (`batches`), a chunk's stacked and copied to the devices
  in a background thread, ahead of the step."""

  def dispatches(self, chunks: list[tuple[int, int]], mesh) -> Iterator[tuple[None, dict]]:
    sharding = NamedSharding(mesh, P(None, "data"))  # [steps, batch, ...]: the batch axis over the devices
    batches = self.batches(chunks[0][0], sum(chunks[-1])) if chunks else iter(())

    def put(n: int):
      return None, {k: jax.make_array_from_process_local_data(sharding, v)
                    for k, v in stack([next(batches) for _ in range(n)]).items()}

    return prefetch(put(n) for _, n in chunks)

  def draw(self, static, mesh):
    return lambda args, i, step: jax.tree.map(lambda x: x[i], args)


def available_memory() -> int:
  """Bytes of host memory available now (Linux MemAvailable; else free physical pages)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def host_budget(config) -> int:
  """Bytes of host memory the "auto" choices may plan for: `train.feature_memory_gb`, else half the available
  memory."""
  gb = config.train.feature_memory_gb
  return int(gb * 2**30) if gb > 0 else available_memory() // 2


def feature_store(config, rows: dict[str, feature_cache.FeatureRows], log=print) -> dict:
  """The cached regime's grids, split -> array: in host memory (`np.ndarray`) or read from disk per batch
  (`FeatureRows`), by `train.feature_store` ("auto": memory when they fit `train.feature_memory_gb`, default half
  the available memory). Logs the choice with the sizes."""
  if not rows:
    return {}
  t = config.train
  need = sum(r.nbytes for r in rows.values())
  budget = host_budget(config)
  mode = t.feature_store
  if mode not in ("auto", "memory", "stream"):
    raise train_state.TrainError(f"train.feature_store must be auto, memory or stream, got {mode!r}")
  if mode == "auto":
    mode = "memory" if need <= budget else "stream"
  gb = lambda b: f"{b / 2**30:.2f} GB"  # noqa: E731
  sizes = " + ".join(f"{s} {gb(r.nbytes)} ({len(r)} grids)" for s, r in rows.items())
  why = (f"<= budget {gb(budget)}" if need <= budget else f"> budget {gb(budget)}") + (
      "" if t.feature_store == "auto" else f"; train.feature_store={t.feature_store}")
  log(f"feature store: {'host memory' if mode == 'memory' else 'streamed from disk'}: {sizes} = {gb(need)} {why}")
  return {s: (r.load() if mode == "memory" else r) for s, r in rows.items()}


def grid_batches(grids, pairs: batching.CaptionPairs, schedule: batching.Schedule, max_len: int, start: int,
                 stop: int, process_index: int = 0, process_count: int = 1, key: str = "grid") -> Iterator[dict]:
  """This process's slice of the batches of steps start..stop-1: `key` (grids [B, h, w, C], or images) from
  `grids` (an array or `FeatureRows`: only these rows are read), tokens and mask cut to the batch's padded
  length."""
  per_proc = schedule.batch_size // process_count
  lo = process_index * per_proc
  for step in range(start, stop):
    idx = schedule.batch(step)
    length = schedule.padded_length(idx, max_len)
    idx = idx[lo:lo + per_proc]
    tokens = pairs.tokens[idx, :length]
    yield {key: grids[pairs.image_index[idx]], "tokens": tokens,
           "mask": (tokens != vocab_lib.PAD_ID).astype(np.float32)}


class TrainRows(HostBatches):
  """The batches of feeds whose train inputs are rows of one array [N, ...], a row per train image (cached
  grids, decoded pixels): `batching.Schedule` batches of caption indices (length-bucketed), each caption's image
  row drawn as `key`; gathered on the host or, where the train data fits, on the devices (`device_feed`, by
  `train.feed_placement`). `_place` sets it up."""
  key = "grid"
  device_resident = True  # whether the train data may go to the devices
  length_bucketed = True  # whether `train.length_bucketing` applies

  def _place(self, config, rows, train: tuple[list[str], dict], vocab: vocab_lib.Vocab, log, host_also: dict,
             what: str) -> dict:
    """Places the train `rows` (an on-disk `FeatureRows`): on the devices (self.device) or in the host store
    (self.train_rows) with the `host_also` splits; returns that store ({split: array or FeatureRows})."""
    t = config.train
    bucket = t.length_bucketing and self.length_bucketed
    self.pairs = batching.caption_pairs(train[0], train[1], vocab, config.data.max_len)
    self.schedule = batching.Schedule(self.pairs.lengths, t.batch_size, config.seed, bucket=bucket)
    self.steps_per_epoch = self.schedule.steps_per_epoch
    where = device_feed.placement(config, rows.nbytes, self.pairs, jax.devices(), log, what) if (
        self.device_resident) else "host"
    # On the devices, the host keeps no train rows: they are read from disk once, straight into the devices.
    store = feature_store(config, {"train": rows, **host_also} if where == "host" else host_also, log)
    self.train_rows = store.get("train", rows)
    self.device = None
    if where != "host":
      self.device = device_feed.DeviceCaptions(
          rows, self.pairs, t.batch_size, config.seed, bucket, config.data.max_len,
          shards=1 if where == "replicate" else jax.device_count(), n_devices=jax.device_count(),
          steps_per_dispatch=t.steps_per_dispatch, key=self.key)
      self.steps_per_epoch = self.device.steps_per_epoch
    return store

  def dispatches(self, chunks: list[tuple[int, int]], mesh):
    return self.device.dispatches(chunks, mesh) if self.device else super().dispatches(chunks, mesh)

  def draw(self, static, mesh):
    return self.device.draw(static, mesh) if self.device else super().draw(static, mesh)

  def batches(self, start: int, stop: int) -> Iterator[dict]:
    return grid_batches(self.train_rows, self.pairs, self.schedule, self.config.data.max_len, start, stop,
                        jax.process_index(), jax.process_count(), self.key)


class CachedFeatures(TrainRows):
  """Frozen encoder: every image encoded once into the feature cache; the decoder trains on the grids
  (`TrainRows`: length-bucketed batches, gathered on the host or the devices)."""
  trainable, inputs = ("decoder",), "grid"

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    self.config, self.builder, self.model = config, builder, model
    [self._objective] = self.step_objectives(config).values()
    self.enc_vars = {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}
    self.directory = self.cache_directory(config, builder, model.encoder.preprocessing.size)
    t0 = time.time()
    names, train_rows = self._features("train", verbose)
    if names != train[0]:
      raise train_state.TrainError(f"feature cache order differs from the dataset; delete {self.directory}")
    self.dev_names, dev_rows = self._features("dev", verbose)
    self.dev_caps = dev[1]
    log(f"features ready in {time.time() - t0:.0f}s: {self.directory} train {train_rows.shape}")
    self.dev_feats = self._place(config, train_rows, train, vocab, log, {"dev": dev_rows}, "grids")["dev"]

  @staticmethod
  def cache_directory(config, builder, size: int) -> str:
    """Where a config's frozen-encoder grids are cached: keyed by the prepared dataset (an adapter's
    cache_id), the encoder, its weights and input size."""
    return feature_cache.directory(
        config.data.feature_cache_dir, getattr(builder, "cache_id", builder.data_dir), config.model.encoder,
        train_state.weights_path(config) if config.model.pretrained else None, config.seed, size)

  def _features(self, split: str, verbose: bool = False):
    return feature_cache.extract(self.builder, split, self.model.encoder, self.enc_vars, self.directory,
                                 self.config.train.eval_batch_size, verbose=verbose)

  @staticmethod
  def step_objectives(config) -> dict[str, train_state.Objective]:
    return {"step": train_state.cross_entropy(config, train_state.decoder_forward)}

  def objective(self, step: int) -> train_state.Objective:
    return self._objective

  def eval_inputs(self, split: str, variables: dict, limit: int = 0) -> SplitInputs:
    """The split's cached grids (the features the decoder trained on; `variables` are not needed); test is read
    from disk batch by batch."""
    if split == "dev":
      names, grids, caps = self.dev_names, self.dev_feats, self.dev_caps
    else:
      (names, grids), caps = self._features(split), tfds_builder.split_captions(self.builder, split)[1]
    names, grids = names[:limit or None], grids[:limit or None]
    return SplitInputs(names, grids, [caps[n] for n in names])


class ImageStream(HostBatches):
  """End to end from images through tf.data (decoded and resized every epoch, optionally augmented); the
  encoder trains from `train.finetune_from_step` with its own learning rate. The fine-tune regime's feed when
  the decoded images would not fit in memory; else `DecodedImages` (`resolve`, by `train.image_feed`)."""
  trainable, inputs = ("encoder", "decoder"), "image"

  @classmethod
  def resolve(cls, config, builder, model: CaptionModel, train: tuple[list[str], dict], log=print):
    """The fine-tune feed `train.image_feed` picks: "decoded" (`DecodedImages`), "stream" (this one) or "auto":
    decoded when the train images as uint8 fit the host budget (`host_budget`), else streamed; logged with the
    sizes."""
    want = config.train.image_feed
    size = model.encoder.preprocessing.size
    # Every process of a multi-host job must pick the same feed: the smallest budget decides.
    need, budget = len(train[0]) * size * size * 3, device_feed.process_min(host_budget(config))
    decoded = want == "decoded" or (want == "auto" and need <= budget)
    gb = lambda b: f"{b / 2**30:.2f} GB"  # noqa: E731
    how = ("decoded once into uint8 (no per-epoch decode; augmentation on the devices)" if decoded else
           "tf.data (decoded and resized every epoch)")
    log(f"image feed: {how}; train images {len(train[0])} x {size}x{size}x3 = {gb(need)} "
        f"{'<=' if need <= budget else '>'} host budget {gb(budget)}; train.image_feed={want}")
    return DecodedImages if decoded else ImageStream

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    self.config, self.builder, self.model, self.vocab = config, builder, model, vocab
    self.steps_per_epoch = sum(len(train[1][n]) for n in train[0]) // config.train.batch_size
    self._frozen, self._training = self.step_objectives(config).values()
    self._encode = encode_fn(model)

  @staticmethod
  def step_objectives(config) -> dict[str, train_state.Objective]:
    return {"step_frozen_encoder": train_state.cross_entropy(config, train_state.image_forward(False)),
            "step_train_encoder": train_state.cross_entropy(config, train_state.image_forward(True))}

  def objective(self, step: int) -> train_state.Objective:
    return self._training if step >= self.config.train.finetune_from_step else self._frozen

  def batches(self, start: int, stop: int) -> Iterator[dict]:
    c, n_proc = self.config, jax.process_count()
    per_proc = c.train.batch_size // n_proc
    it = pipeline.train_batches(self.builder, self.vocab, batch_size=per_proc, max_len=c.data.max_len,
                                preprocessing=self.model.encoder.preprocessing, augment=c.train.augment,
                                seed=c.seed, process_index=jax.process_index(), process_count=n_proc,
                                skip_examples=start * per_proc)
    for _ in range(start, stop):
      yield next(it)

  def eval_inputs(self, split: str, variables: dict, limit: int = 0) -> SplitInputs:
    """The split's images encoded with the current encoder `variables` (what a Captioner would see)."""
    return feature_cache.encode_split(lambda x: self._encode(variables, x), self.builder, split,
                                      self.model.encoder.preprocessing, self.config.train.eval_batch_size, limit)


class DecodedImages(TrainRows, ImageStream):
  """End to end from images decoded once: every train image decoded and resized (by the tf.data pipeline, so
  the pixels are tf.data's) into one uint8 array [N, S, S, 3] cached on disk (`feature_cache.decode`, next to
  the features); it goes to the devices where it fits (`TrainRows`, by `train.feed_placement`), else batches
  are gathered from it in host memory. `train.augment` crops and jitters each batch on the devices, inside the
  step (`jaxcap.augment`, keyed by the step). The encoder normalizes the uint8 batch in the model, as it does
  tf.data's. Validation, objectives and what trains are `ImageStream`'s; the order is `TrainRows`' (a pure
  function of the step), not tf.data's shuffle, and not length-bucketed, like tf.data's: the encoder's cost does
  not depend on the caption length, and batches sorted by length are batches of alike captions (on the
  synthetic data, of one template): on them the quickstart reached test BLEU-4 0.78, tf.data's batches 0.98."""
  key = "image"
  length_bucketed = False

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
    self._place(config, rows, train, vocab, log, {}, "images")

  def draw(self, static, mesh):
    """The batch of step `step` (gathered on the devices, or sliced from the copied host batches), augmented
    there when `train.augment`."""
    draw, seed = super().draw(static, mesh), self.config.seed
    if not self.config.train.augment:
      return draw

    def augmented(args, i, step):
      batch = draw(args, i, step)
      return {**batch, "image": augment.augment(batch["image"], augment.key(seed, step))}

    return augmented


class CiderReward:
  """CIDEr-D of sampled captions against their train image's references, with document frequencies from all
  train references; <end> counts as a word on both sides, so a caption that stops mid-phrase ("a man in a")
  loses the n-grams that end the references."""

  def __init__(self, vocab: vocab_lib.Vocab, train: tuple[list[str], dict]):
    self.vocab = vocab
    self.refs = [[" ".join(vocab_lib.normalize(c) + [vocab_lib.END]) for c in train[1][n]] for n in train[0]]
    self.scorer = CiderD(self.refs)

  def text(self, tokens: np.ndarray) -> str:
    ended = (tokens == vocab_lib.END_ID).any()
    return " ".join(self.vocab.to_text(tokens).split() + ([vocab_lib.END] if ended else []))

  def __call__(self, tokens: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """tokens [B, S, L], image_index [B] (rows of the train split) -> rewards [B, S]."""
    b, n, length = tokens.shape
    hyps = [self.text(t) for t in tokens.reshape(-1, length)]
    return self.scorer.score(hyps, self.refs, ref_index=np.repeat(image_index, n)).reshape(b, n)


class SelfCritical(CachedFeatures):
  """Self-critical sequence training on the cached features: batches of train images (not captions), each
  image's captions sampled in the step and rewarded by CIDEr-D (`CiderReward`); starts from a cross-entropy
  checkpoint (`train.init_from`). Epoch e's image order depends only on (seed, e). Host-fed: its step calls back
  to the host for the rewards anyway."""
  trainable, inputs = ("decoder",), "grid"
  device_resident = False

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    super().__init__(config, builder, model, variables, vocab, train, dev, log, verbose)
    [self._objective] = self.step_objectives(config, CiderReward(vocab, train)).values()
    n_images = len(self.train_rows)
    self.schedule = batching.Schedule(np.zeros(n_images, np.int32), config.train.batch_size, config.seed,
                                      bucket=False)
    self.steps_per_epoch = self.schedule.steps_per_epoch

  @staticmethod
  def step_objectives(config, reward=None) -> dict[str, train_state.Objective]:
    reward = reward or (lambda tokens, index: np.zeros(tokens.shape[:2], np.float32))
    return {"step": train_state.self_critical(config, reward)}

  def batches(self, start: int, stop: int) -> Iterator[dict]:
    per_proc = self.config.train.batch_size // jax.process_count()
    lo = jax.process_index() * per_proc
    for step in range(start, stop):
      idx = self.schedule.batch(step)[lo:lo + per_proc]
      yield {"grid": self.train_rows[idx], "image_index": idx.astype(np.int32)}


FEEDS = {"cached": CachedFeatures, "finetune": ImageStream, "self_critical": SelfCritical}


def feed_class(config):
  """The feed class the config's `train.regime` names."""
  if config.train.regime not in FEEDS:
    raise train_state.TrainError(f"train.regime must be one of {', '.join(FEEDS)}, got {config.train.regime!r}")
  return FEEDS[config.train.regime]


def make_feed(config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
              train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
  """The regime's feed; a regime with more than one way to feed it (fine-tune: decoded or streamed images)
  picks one in its class's `resolve`, with the data's sizes at hand."""
  cls = feed_class(config)
  cls = cls.resolve(config, builder, model, train, log) if hasattr(cls, "resolve") else cls
  return cls(config, builder, model, variables, vocab, train, dev, log, verbose)
