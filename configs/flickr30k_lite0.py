"""Flickr30k (Karpathy's split JSON), pretrained EfficientNet-Lite0 frozen (feature cache), Show-Attend-Tell decoder
with the deep output layer. Meant for an accelerator (GPU or TPU): bf16 compute, batch 128.

    python -m jaxcap.pretrained convert efficientnet_lite0      # once (needs requirements-torch.txt)
    python train.py --config configs/flickr30k_lite0.py \
        --config.data.data_dir=/data/flickr30k-images --config.data.karpathy_json=/data/dataset_flickr30k.json

Not trained here (neither Flickr30k nor an accelerator was available), so there are no expected figures yet; the
settings are Flickr8k's recipe scaled to Flickr30k's size, not tuned.

data_dir is the folder of Flickr30k's JPEGs (flickr30k-images/; --config.data.data_dir or $JAXCAP_FLICKR30K_DIR),
karpathy_json Karpathy's dataset_flickr30k.json from caption_datasets.zip ("" takes the one dataset_*.json
inside data_dir). The splits are the JSON's (train,
val -> dev, test), 5 captions an image; missing or unreadable images are reported and skipped. The counts:
    python -m jaxcap.data.stats --dataset karpathy --data_dir DIR --karpathy_json JSON
The features of the ~31k images (7x7x1280 float16, under 4 GB) are extracted once and cached.
"""
import os

from configs import default


def get_config():
  c = default.get_config()
  c.data.dataset = "karpathy"
  c.data.data_dir = os.environ.get("JAXCAP_FLICKR30K_DIR", "")
  c.model.encoder = "efficientnet_lite0"
  c.model.pretrained = "default"
  c.model.deep_output = True
  c.model.dtype = "bfloat16"
  c.train.regime = "cached"
  c.train.batch_size = 128
  c.train.num_epochs = 8
  c.train.warmup_steps = 300
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.eval_batch_size = 128
  return c
