"""Flickr8k, pretrained EfficientNet-Lite0 frozen (feature cache), Show-Attend-Tell decoder: the CPU config.

    python -m jaxcap.pretrained convert efficientnet_lite0      # once (needs requirements-torch.txt)
    python train.py --config configs/flickr8k_lite0.py --config.data.data_dir=/path/to/flickr8k

Expect dev BLEU-4 0.1630 / 0.1595 / 0.1878 / 0.1943 at steps 500 / 1000 / 1500 / 1872 and test greedy BLEU-4
0.2166 (official split; AMD EPYC Zen 4, AVX-512), in about 10-15 minutes on a 2-core CPU, the first run also
extracting the features of all 8,091 images once (7x7x1280 float16, cached). The run is bit-for-bit on one
processor model; another may differ in the last digits (docs/training.md, Determinism). The folder:
--config.data.data_dir or $JAXCAP_FLICKR8K_DIR.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.model.encoder = "efficientnet_lite0"
  c.model.pretrained = "default"
  c.model.deep_output = True  # Xu et al.'s deep output layer before the vocabulary projection
  c.train.regime = "cached"
  return c
