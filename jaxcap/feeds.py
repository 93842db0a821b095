"""Feeds: one class per way of feeding the train step. `make_feed` is the one place the config's regime is read.

A feed knows
  - `steps_per_epoch`;
  - `trainable`: the parameter groups the step differentiates;
  - `inputs`: what its batches carry besides captions ("grid": cached features, "image": pixels);
  - `objective(step)`: what the step at `step` minimizes, one of `step_objectives(config)` (one jitted step
    each);
  - `batches(start, stop)`: this process's batches for steps start..stop-1, a pure function of the step, so a
    resumed run sees exactly the batches the uninterrupted one would;
  - `eval_inputs(split, variables, limit)`: what validation decodes (`evaluator.SplitInputs`).
Every feed is built as Feed(config, builder, model, variables, vocab, train, dev, log, verbose). Adding a way of
training is one new class here and one entry in FEEDS; the loop (`train_lib`) never asks which one it has.

`CachedFeatures` reads its grids from the store `feature_store` picks, the one place that choice is made and
logged with the sizes: host memory where the train and dev grids fit the budget, else streamed from the on-disk
cache batch by batch (bounded host memory at any dataset size; in a multi-host job each process reads only the
rows of its slice of each batch). Both give the same batches. (A device-resident store would join this choice.)
"""
from __future__ import annotations

import os
import time
from typing import Iterator

import jax
import numpy as np

from jaxcap import feature_cache, train_state
from jaxcap.cider import CiderD
from jaxcap.data import batching, pipeline, tfds_builder
from jaxcap.data import vocab as vocab_lib
from jaxcap.evaluator import SplitInputs
from jaxcap.models.caption_model import CaptionModel, encode_fn

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


def feature_store(config, rows: dict[str, feature_cache.FeatureRows], log=print) -> dict:
  """The cached regime's grids, split -> array: in host memory (`np.ndarray`) or read from disk per batch
  (`FeatureRows`), by `train.feature_store` ("auto": memory when they fit `train.feature_memory_gb`, default half
  the available memory). Logs the choice with the sizes."""
  t = config.train
  need = sum(r.nbytes for r in rows.values())
  budget = int(t.feature_memory_gb * 2**30) if t.feature_memory_gb > 0 else available_memory() // 2
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
                 stop: int, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """This process's slice of the batches of steps start..stop-1: grids [B, h, w, C] from `grids` (an array or
  `FeatureRows`: only these rows are read), tokens and mask cut to the batch's padded length."""
  per_proc = schedule.batch_size // process_count
  lo = process_index * per_proc
  for step in range(start, stop):
    idx = schedule.batch(step)
    length = schedule.padded_length(idx, max_len)
    idx = idx[lo:lo + per_proc]
    tokens = pairs.tokens[idx, :length]
    yield {"grid": grids[pairs.image_index[idx]], "tokens": tokens,
           "mask": (tokens != vocab_lib.PAD_ID).astype(np.float32)}


class CachedFeatures:
  """Frozen encoder: every image encoded once into the feature cache; the decoder trains on the grids, with
  length-bucketed batches of caption indices (`batching.Schedule`)."""
  trainable, inputs = ("decoder",), "grid"

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    self.config, self.builder, self.model = config, builder, model
    [self._objective] = self.step_objectives(config).values()
    t = config.train
    self.enc_vars = {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}
    self.directory = feature_cache.directory(  # keyed by the prepared dataset (an adapter's cache_id)
        config.data.feature_cache_dir, getattr(builder, "cache_id", builder.data_dir), config.model.encoder,
        train_state.weights_path(config) if config.model.pretrained else None, config.seed,
        model.encoder.preprocessing.size)
    t0 = time.time()
    names, train_rows = self._features("train", verbose)
    if names != train[0]:
      raise train_state.TrainError(f"feature cache order differs from the dataset; delete {self.directory}")
    self.dev_names, dev_rows = self._features("dev", verbose)
    self.dev_caps = dev[1]
    log(f"features ready in {time.time() - t0:.0f}s: {self.directory} train {train_rows.shape}")
    store = feature_store(config, {"train": train_rows, "dev": dev_rows}, log)
    self.train_feats, self.dev_feats = store["train"], store["dev"]
    self.pairs = batching.caption_pairs(train[0], train[1], vocab, config.data.max_len)
    self.schedule = batching.Schedule(self.pairs.lengths, t.batch_size, config.seed, bucket=t.length_bucketing)
    self.steps_per_epoch = self.schedule.steps_per_epoch

  def _features(self, split: str, verbose: bool = False):
    return feature_cache.extract(self.builder, split, self.model.encoder, self.enc_vars, self.directory,
                                 self.config.train.eval_batch_size, verbose=verbose)

  @staticmethod
  def step_objectives(config) -> dict[str, train_state.Objective]:
    return {"step": train_state.cross_entropy(config, train_state.decoder_forward)}

  def objective(self, step: int) -> train_state.Objective:
    return self._objective

  def batches(self, start: int, stop: int) -> Iterator[dict]:
    return grid_batches(self.train_feats, self.pairs, self.schedule, self.config.data.max_len, start, stop,
                        jax.process_index(), jax.process_count())

  def eval_inputs(self, split: str, variables: dict, limit: int = 0) -> SplitInputs:
    """The split's cached grids (the features the decoder trained on; `variables` are not needed); test is read
    from disk batch by batch."""
    if split == "dev":
      names, grids, caps = self.dev_names, self.dev_feats, self.dev_caps
    else:
      (names, grids), caps = self._features(split), tfds_builder.split_captions(self.builder, split)[1]
    names, grids = names[:limit or None], grids[:limit or None]
    return SplitInputs(names, grids, [caps[n] for n in names])


class ImageStream:
  """End to end from images through tf.data (decoded and resized every epoch, optionally augmented); the
  encoder trains from `train.finetune_from_step` with its own learning rate."""
  trainable, inputs = ("encoder", "decoder"), "image"

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
  checkpoint (`train.init_from`). Epoch e's image order depends only on (seed, e)."""
  trainable, inputs = ("decoder",), "grid"

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    super().__init__(config, builder, model, variables, vocab, train, dev, log, verbose)
    [self._objective] = self.step_objectives(config, CiderReward(vocab, train)).values()
    n_images = len(self.train_feats)
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
      yield {"grid": self.train_feats[idx], "image_index": idx.astype(np.int32)}


FEEDS = {"cached": CachedFeatures, "finetune": ImageStream, "self_critical": SelfCritical}


def feed_class(config):
  """The feed class the config's `train.regime` names."""
  if config.train.regime not in FEEDS:
    raise train_state.TrainError(f"train.regime must be one of {', '.join(FEEDS)}, got {config.train.regime!r}")
  return FEEDS[config.train.regime]


def make_feed(config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
              train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
  return feed_class(config)(config, builder, model, variables, vocab, train, dev, log, verbose)
