"""Feeds: one class per way of feeding the train step. `make_feed` is the one place the config's regime is read.

A feed knows
  - `steps_per_epoch`;
  - `trainable`: the parameter groups the step differentiates (or encoder modules, "encoder/<name>");
  - `inputs`: what its batches carry besides captions ("grid": cached features, "image": pixels, "trunk": the
    encoder's cached trunk);
  - `objective(step)`: what the step at `step` minimizes, one of `step_objectives(config)` (one jitted step
    each, `jaxcap.objectives`);
  - `batches(start, stop)`: this process's batches for steps start..stop-1, a pure function of the step, so a
    resumed run sees exactly the batches the uninterrupted one would;
  - `eval_inputs(split, variables, limit)`: what validation decodes (`grids.SplitInputs`);
  - `dispatches(chunks, mesh)` and `draw(static, mesh)`: what the loop runs, one jitted call per chunk of steps
    (`host.chunks`): (static, args) per chunk, and draw(static, mesh)(args, i, step) -> the batch of the chunk's
    i-th step inside that call.
The last three come from the feed's `source` of train batches (`host.Feed`): host batches copied ahead of the
step (`host.HostBatches`), or rows of one array, a row per train image (cached grids, decoded pixels), that may
be resident on the devices instead (`rows.TrainRows`, `jaxcap.device_feed`).

Modules: `host` (chunks, prefetch, host batches), `rows` (train rows and where they live), `cached` (frozen
encoder, `CachedFeatures`), `images` (fine-tune: `ImageStream`, `DecodedImages`), `self_critical`
(`SelfCritical`), `top` (the encoder's top on its cached trunk: `TopOfEncoder`). Every feed is built as Feed(config, builder, model, variables, vocab, train, dev, log,
verbose). Adding a way of training is one new class and one entry in FEEDS; the loop (`train_lib`) never asks
which one it has. A regime fed more than one way (fine-tune: `DecodedImages` or `ImageStream`, by
`train.image_feed`) picks one in its class's `resolve`, which `make_feed` calls with the data's sizes at hand.
"""
from __future__ import annotations

from jaxcap import train_state
from jaxcap.data import vocab as vocab_lib
from jaxcap.feeds.cached import CachedFeatures
from jaxcap.feeds.images import FineTune
from jaxcap.feeds.self_critical import SelfCritical
from jaxcap.feeds.top import TopOfEncoder
from jaxcap.models.caption_model import CaptionModel

FEEDS = {"cached": CachedFeatures, "finetune": FineTune, "self_critical": SelfCritical, "top": TopOfEncoder}


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
