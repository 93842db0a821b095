"""Encoder registry: a name -> the Flax module, its preprocessing and its feature width.

Every encoder maps uint8 RGB images [B, H, W, 3] to (grid [B, h, w, C], pooled [B, C]) and owns its
`preprocessing`, so callers only ever resize to `preprocessing.size`.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jaxcap.data.preprocessing import Preprocessing
from jaxcap.models import efficientnet_lite, resnet
from jaxcap.models.layers import global_avg_pool


class SmallCNN(nn.Module):
  """A tiny from-scratch encoder for the synthetic quickstart and tests (no pretrained weights)."""
  # Three stride-2 layers, then a stride-1 one: a 31-pixel receptive field per grid cell, enough to tell a
  # circle from a square at the quickstart's 64x64.
  features: tuple[int, ...] = (32, 64, 96, 128)
  image_size: int = 64
  dtype: Any = jnp.float32

  @property
  def preprocessing(self) -> Preprocessing:
    return Preprocessing(self.image_size, (127.5,) * 3, (127.5,) * 3)

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = self.preprocessing.normalize(images).astype(self.dtype)
    for i, f in enumerate(self.features):
      stride = 2 if i < 3 else 1
      x = nn.Conv(f, (3, 3), (stride, stride), dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
    return x, global_avg_pool(x)


RESNETS = {f"resnet{d}": (d, "torchvision") for d in resnet.STAGE_SIZES}
RESNETS.update({f"resnet{d}_keras": (d, "keras") for d in (50, 101, 152)})
NAMES = ("small_cnn", *efficientnet_lite.VARIANTS, *RESNETS)


def make_encoder(name: str, dtype: Any = jnp.float32, depthwise_impl: str = "auto", image_size: int = 64,
                 num_classes: int = 0) -> nn.Module:
  if name == "small_cnn":
    return SmallCNN(image_size=image_size, dtype=dtype)
  if name in efficientnet_lite.VARIANTS:
    return efficientnet_lite.EfficientNetLite(name, num_classes=num_classes, depthwise_impl=depthwise_impl,
                                              dtype=dtype)
  if name in RESNETS:
    depth, style = RESNETS[name]
    return resnet.ResNet(depth, style, num_classes=num_classes, dtype=dtype)
  raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(NAMES)}")


def output_shapes(encoder: nn.Module, batch: int = 1):
  """(grid shape, pooled shape) without running the model."""
  import jax
  size = encoder.preprocessing.size
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
  shapes = jax.eval_shape(lambda: encoder.init_with_output(jax.random.key(0), jnp.zeros(x.shape, x.dtype))[0])
  return tuple(shapes[0].shape), tuple(shapes[1].shape)
