"""The best Flickr8k recipe chosen on dev, a recipe config for `jaxcap.recipe`:

    python -m jaxcap.recipe --config configs/flickr8k_best.py --config.base.data.data_dir=/path/to/flickr8k

Expect on the official test split, at beam 20 with consensus reranking: the single model BLEU-4 0.240, CIDEr-D
0.628; the ensemble of three BLEU-4 0.255, CIDEr-D 0.657. 70 minutes on a 2-core CPU from a cold feature cache.
It runs cross-entropy on Lite1 features (seed 0), adapts the top 2 stages of Lite1 from it (the top regime),
trains self-critically from the adapted model, and trains cross-entropy on Lite0 features (seed 1). It then
builds a consensus index and evaluates the single (self-critical) model and the ensemble of it, the adapted
model and the Lite0 model. The folder: --config.base.data.data_dir or $JAXCAP_FLICKR8K_DIR.
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
  # `train` fields on top of the cross-entropy config that make the encoder adaptation run started from it (the
  # top regime: the last 2 stages of the encoder fine-tuned with the decoder on the cached trunk, one epoch of
  # image-major batches), for the first `top_seeds` chains; self-critical training then starts from it.
  c.top = ml_collections.ConfigDict(dict(
      regime="top", top_stages=2, captions_per_image=5, batch_size=60, num_epochs=1, learning_rate=2e-4,
      warmup_steps=50, encoder_learning_rate=1e-4, eval_every=250, checkpoint_every=250))
  c.top_seeds = 1
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
