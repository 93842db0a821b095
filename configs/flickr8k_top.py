"""Flickr8k, EfficientNet-Lite0's top stages fine-tuned with the decoder on the cached trunk: the encoder
adaptation step, started from a cross-entropy run of configs/flickr8k_lite0.py.

    python train.py --config configs/flickr8k_lite0.py --workdir workdirs/lite0 --config.data.data_dir=DIR
    python train.py --config configs/flickr8k_top.py --workdir workdirs/lite0_top \\
        --config.train.init_from=workdirs/lite0 --config.data.data_dir=DIR

The first run caches the trunk (the output of the layers below the top 2 stages: 14x14x112 float16 per image).
Each step runs the top once per image for its 5 captions (image-major batches of 12 images).
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
