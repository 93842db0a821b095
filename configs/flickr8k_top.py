"""Flickr8k, EfficientNet-Lite0's top 2 stages fine-tuned with the decoder on the cached trunk, started from a
cross-entropy run of configs/flickr8k_lite0.py (the deterministic run's workdir):

    python train.py --config configs/flickr8k_top.py --workdir workdirs/flickr8k_top \
        --config.train.init_from=workdirs/flickr8k_lite0 --config.data.data_dir=/path/to/flickr8k

Expect dev BLEU-4 0.1990 (CIDEr-D 0.495) after the first epoch (step 500) and 0.1929 after the second; the kept
step-500 checkpoint gives test greedy BLEU-4 0.2087, CIDEr-D 0.526 (its start: dev 0.1943, test 0.2166 / 0.537).
About 15 minutes on a 2-core CPU; the first run also caches the trunk (14x14x112 float16 per image, ~75 s).
Each step runs the top once per image for its 5 captions (12 images x 5 captions). docs/adapt.md.
"""
from configs import flickr8k_lite0


def get_config():
  c = flickr8k_lite0.get_config()
  c.train.regime = "top"
  c.train.top_stages = 2
  c.train.captions_per_image = 5
  c.train.batch_size = 60            # 12 images x 5 captions
  c.train.num_epochs = 2
  c.train.learning_rate = 2e-4       # the decoder, continuing from the cross-entropy run
  c.train.warmup_steps = 50
  c.train.encoder_learning_rate = 1e-4
  return c
