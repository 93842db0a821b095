"""The best Flickr8k recipe chosen on dev, a recipe config for `jaxcap.recipe`: cross-entropy for seeds 0 (Lite1
features) and 1 (Lite0 features), self-critical CIDEr-D training from seed 0, a consensus index, then the test
evaluation of the single model and of the ensemble.

    python -m jaxcap.recipe --config configs/flickr8k_best.py --config.base.data.data_dir=/path/to/flickr8k

Expect on the official test split, at beam 20 with consensus reranking: the ensemble of three BLEU-4 0.251,
CIDEr-D 0.641; the single (self-critical) model BLEU-4 0.242, CIDEr-D 0.617. 44-74 minutes on a 2-core CPU from
a cold feature cache. The folder: --config.base.data.data_dir or $JAXCAP_FLICKR8K_DIR.
"""
import ml_collections

from configs import flickr8k_lite0


def get_config():
  c = ml_collections.ConfigDict()
  # The cross-entropy run (every field a training config has).
  c.base = flickr8k_lite0.get_config()
  c.base.model.encoder = "efficientnet_lite1"
  # `train` fields on top of the cross-entropy config that make the self-critical run started from it: a cosine
  # from 1e-4 to 5e-6 laid over 1,750 steps (`decay_steps`) and stopped at step 1,250; the checkpoint kept is
  # the best on dev CIDEr-D.
  c.self_critical = ml_collections.ConfigDict(dict(
      regime="self_critical", select_metric="cider", batch_size=16, learning_rate=1e-4, warmup_steps=0,
      final_lr_fraction=0.05, num_steps=1250, decay_steps=1750, eval_every=250, checkpoint_every=250))
  # Chains (seeds 0..n-1); more than one: the final models are also evaluated as an ensemble.
  c.seeds = 2
  # Chain i's encoder (the base's past the end of the list): the ensemble sees each photo through two encoders.
  c.encoders = ["efficientnet_lite1", "efficientnet_lite0"]
  # The first this many seeds go on to self-critical training.
  c.self_critical_seeds = 1
  # The ensemble also takes the cross-entropy model each self-critical one started from.
  c.ensemble_cross_entropy = True
  # Test decoding: beam size and length penalty exponent, and consensus reranking (jaxcap/consensus): the beams
  # re-ranked by score + weight * CIDEr-D against the captions of the k nearest train images.
  c.beam = 20
  c.alpha = 1.0
  c.consensus = ml_collections.ConfigDict(dict(k=15, weight=4.0))
  return c
