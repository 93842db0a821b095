"""Flickr8k, pretrained EfficientNet-Lite0 frozen (feature cache), Show-Attend-Tell decoder: the CPU config.

    python -m jaxcap.pretrained convert efficientnet_lite0      # once (needs requirements-torch.txt)
    python train.py --config configs/flickr8k_lite0.py --config.data.data_dir=/path/to/flickr8k

Expect dev BLEU-4 0.1611 / 0.1484 / 0.1910 / 0.1934 at steps 500 / 1000 / 1500 / 1872 and test greedy BLEU-4
0.2058 (official split), in about 10 minutes on a 2-core CPU plus about 3 minutes the first time to extract the
features of all 8,091 images (7x7x1280 float16, cached). The run is deterministic on one machine; another
processor may differ in the last digits. The folder: --config.data.data_dir or $JAXCAP_FLICKR8K_DIR.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.model.encoder = "efficientnet_lite0"
  c.model.pretrained = "default"
  c.model.deep_output = True  # Xu et al.'s deep output layer before the vocabulary projection
  c.train.regime = "cached"
  return c
