"""The best Flickr8k recipe, chosen on dev: a recipe config for `jaxcap.recipe` (features, cross-entropy,
self-critical CIDEr-D training, for each ensemble seed, then the test evaluation).

    python -m jaxcap.recipe --config configs/flickr8k_best.py --workdir workdirs/flickr8k_best \
        --config.base.data.data_dir=../shared/data/flickr8k

FIGURES: filled in from the timed run.
"""
import ml_collections

from configs import flickr8k_lite0


def get_config():
  c = ml_collections.ConfigDict()
  # The cross-entropy run (every field a training config has).
  c.base = flickr8k_lite0.get_config()
  # Then self-critical training from it: these `train` fields on top of the cross-entropy config.
  c.self_critical = ml_collections.ConfigDict(dict(
      regime="self_critical", select_metric="cider", learning_rate=1e-4, warmup_steps=0, final_lr_fraction=1.0,
      num_epochs=3, num_steps=0, log_every=31, eval_every=93, checkpoint_every=93))
  # Chains (seeds 0..n-1); more than one: the final models are also evaluated as an ensemble.
  c.seeds = 2
  # Test decoding: beam size and length penalty exponent.
  c.beam = 3
  c.alpha = 1.0
  return c
