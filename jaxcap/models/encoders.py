"""Encoder registry: a name -> the Flax module, its preprocessing and its feature width.

Every encoder maps uint8 RGB images [B, H, W, 3] to (grid [B, h, w, C], pooled [B, C]) and owns its
`preprocessing`, so callers only ever resize to `preprocessing.size`. Each is a sequence of `num_layers`
layers grouped in stages (`stage_starts`); `encoder(x, span=(a, b))` runs layers a..b-1 only, so a trunk can be
cached and the top trained on it (`top_start` is the cut a config's `train.top_stages` names).
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

  @property
  def num_layers(self) -> int:
    return len(self.features)

  @property
  def stage_starts(self) -> tuple[int, ...]:
    return tuple(range(len(self.features)))  # each conv is a stage

  @nn.compact
  def __call__(self, x, train: bool = False, span: tuple[int, int] | None = None):
    first, stop = span or (0, self.num_layers)
    x = x if first == 0 else x.astype(self.dtype)
    for i in range(first, stop):
      f = self.features[i]
      if i == 0:
        x = self.preprocessing.normalize(x).astype(self.dtype)
      stride = 2 if i < 3 else 1
      x = nn.Conv(f, (3, 3), (stride, stride), dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
    return x if span is not None else (x, global_avg_pool(x))


RESNETS = {f"resnet{d}": (d, "torchvision") for d in resnet.STAGE_SIZES}
RESNETS.update({f"resnet{d}_keras": (d, "keras") for d in (50, 101, 152)})
NAMES = ("small_cnn", *efficientnet_lite.VARIANTS, *RESNETS)


def make_encoder(name: str, dtype: Any = jnp.float32, depthwise_impl: str = "auto", image_size: int = 64,
                 num_classes: int = 0, input_size: int = 0) -> nn.Module:
  """`image_size`: small_cnn's input side; `input_size`: a pretrained encoder's (0 = its own resolution)."""
  if name == "small_cnn":
    return SmallCNN(image_size=image_size, dtype=dtype)
  if name in efficientnet_lite.VARIANTS:
    return efficientnet_lite.EfficientNetLite(name, num_classes=num_classes, depthwise_impl=depthwise_impl,
                                              dtype=dtype, input_size=input_size)
  if name in RESNETS:
    depth, style = RESNETS[name]
    return resnet.ResNet(depth, style, num_classes=num_classes, dtype=dtype, input_size=input_size)
  raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(NAMES)}")


def top_start(encoder: nn.Module, top_stages: int) -> int:
  """The first layer of the encoder's last `top_stages` stages: layers from there on train, the ones below form
  the trunk (`encoder(x, span=...)`); a one-line error naming `train.top_stages` when out of range."""
  starts = encoder.stage_starts
  if not 1 <= top_stages <= len(starts):
    raise ValueError(f"train.top_stages must be in 1..{len(starts)} for this encoder "
                     f"({len(starts)} stages), got {top_stages}")
  return starts[-top_stages]


def output_shapes(encoder: nn.Module, batch: int = 1):
  """(grid shape, pooled shape) without running the model."""
  import jax
  size = encoder.preprocessing.size
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
  shapes = jax.eval_shape(lambda: encoder.init_with_output(jax.random.key(0), jnp.zeros(x.shape, x.dtype))[0])
  return tuple(shapes[0].shape), tuple(shapes[1].shape)
