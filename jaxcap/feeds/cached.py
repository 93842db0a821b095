"""The cached regime's feed: a frozen encoder, every image encoded once into the feature cache
(`feature_cache`), the decoder trained on the grids."""
from __future__ import annotations

import time

from jaxcap import feature_cache, objectives, train_state
from jaxcap.data import tfds_builder
from jaxcap.data import vocab as vocab_lib
from jaxcap.feeds.host import Feed
from jaxcap.feeds.rows import TrainRows
from jaxcap.grids import SplitInputs
from jaxcap.models.caption_model import CaptionModel


class CachedFeatures(Feed):
  """Frozen encoder: every image encoded once into the feature cache; the decoder trains on the grids
  (`TrainRows`: length-bucketed batches, or image-major ones by `train.captions_per_image`, gathered on the host
  or the devices)."""
  trainable, inputs = ("decoder",), "grid"
  device_resident = True  # whether the train grids may go to the devices

  def __init__(self, config, builder, model: CaptionModel, variables: dict, vocab: vocab_lib.Vocab,
               train: tuple[list[str], dict], dev: tuple[list[str], dict], log=print, verbose: bool = True):
    self.config, self.builder, self.model = config, builder, model
    [self._objective] = self.step_objectives(config).values()
    self.enc_vars = feature_cache.encoder_variables(variables)
    # Keyed by the encoder's variables too: self-critical training from an adapted encoder (the top regime's)
    # encodes with that encoder, not the weights file's.
    self.directory = feature_cache.directory_for(config, builder, model.encoder.preprocessing.size, self.enc_vars)
    t0 = time.time()
    names, train_rows = self._features("train", verbose)
    if names != train[0]:
      raise train_state.TrainError(f"feature cache order differs from the dataset; delete {self.directory}")
    self.dev_names, dev_rows = self._features("dev", verbose)
    self.dev_caps = dev[1]
    log(f"features ready in {time.time() - t0:.0f}s: {self.directory} train {train_rows.shape}")
    self.source = TrainRows(config, train_rows, train, vocab, log, {"dev": dev_rows}, "grids", key="grid",
                            device_resident=self.device_resident,
                            per_image=config.train.get("captions_per_image", 0))
    self.dev_feats = self.source.store["dev"]

  def _features(self, split: str, verbose: bool = False):
    return feature_cache.extract(self.builder, split, self.model.encoder, self.enc_vars, self.directory,
                                 self.config.train.eval_batch_size, verbose=verbose)

  @staticmethod
  def step_objectives(config) -> dict[str, objectives.Objective]:
    return {"step": objectives.cross_entropy(config, objectives.decoder_forward)}

  def objective(self, step: int) -> objectives.Objective:
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
