"""EfficientNet-Lite0/1/2 in Flax, laid out like the `efficientnet-lite-pytorch` port of the TF reference.

Lite = EfficientNet without squeeze-excitation, with ReLU6, and with the stem (32) and head (1280) widths
and the first/last stage depths left unscaled. Input: uint8 (or 0..255 float) RGB [B, H, W, 3]; the module
normalizes with `PREPROCESSING`, (x - 127) / 128, the statistics the ImageNet weights were trained with.
"""
from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jaxcap.data.preprocessing import LITE, Preprocessing
from jaxcap.models.layers import DepthwiseConv, global_avg_pool, same_padding

# (repeats, kernel, stride, expand, in, out) per stage, from efficientnet_lite_builder.py.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# name -> (width, depth, resolution)
VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224), "efficientnet_lite1": (1.0, 1.1, 240),
            "efficientnet_lite2": (1.1, 1.2, 260)}
BN_EPS = 1e-3


def preprocessing(name: str) -> Preprocessing:
  return Preprocessing(VARIANTS[name][2], **LITE)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  f = filters * width
  new = max(divisor, int(f + divisor / 2) // divisor * divisor)
  return int(new + divisor if new < 0.9 * f else new)


def block_specs(name: str) -> list[dict]:
  """One dict per MBConv block: kernel, stride, expand, in, out (after width/depth scaling)."""
  width, depth, _ = VARIANTS[name]
  specs = []
  for i, (r, k, s, e, cin, cout) in enumerate(STAGES):
    fixed = i in (0, len(STAGES) - 1)  # Lite keeps first and last stages' depth
    repeats = r if fixed else int(math.ceil(depth * r))
    cin = 32 if i == 0 else round_filters(cin, width)
    cout = round_filters(cout, width)
    for j in range(repeats):
      specs.append(dict(kernel=k, stride=s if j == 0 else 1, expand=e, cin=cin if j == 0 else cout, cout=cout))
  return specs


class _ConvBN(nn.Module):
  """k x k conv (no bias, TF 'SAME') or 1x1 as a matmul, then BatchNorm, then optional ReLU6."""
  features: int
  kernel: int = 1
  stride: int = 1
  act: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.kernel == 1:
      x = nn.Dense(self.features, use_bias=False, dtype=self.dtype, name="conv")(x)
    else:
      pad = tuple(same_padding(s, self.kernel, self.stride) for s in x.shape[1:3])
      x = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride), padding=pad,
                  use_bias=False, dtype=self.dtype, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=BN_EPS, dtype=self.dtype,
                     name="bn")(x)
    return jnp.clip(x, 0, 6) if self.act else x


class MBConv(nn.Module):
  kernel: int
  stride: int
  expand: int
  cin: int
  cout: int
  depthwise_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, train: bool):
    x = inputs
    if self.expand != 1:
      x = _ConvBN(self.cin * self.expand, dtype=self.dtype, name="expand")(x, train)
    x = DepthwiseConv(self.kernel, self.stride, self.depthwise_impl, self.dtype, name="depthwise")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=BN_EPS, dtype=self.dtype,
                     name="depthwise_bn")(x)
    x = jnp.clip(x, 0, 6)
    x = _ConvBN(self.cout, act=False, dtype=self.dtype, name="project")(x, train)
    if self.stride == 1 and self.cin == self.cout:
      x = x + inputs
    return x


class EfficientNetLite(nn.Module):
  """Returns (grid [B, H/32, W/32, 1280], pooled [B, 1280]) and, with num_classes > 0, logits too.

  Its layers, in order: the stem, one per MBConv block, the head. `span=(a, b)` runs layers a..b-1 only and
  returns their output (a = 0 takes images, else the output of layer a - 1): a trunk cached once and the top
  trained on it (`jaxcap.feeds.top`). `stage_starts`: the first layer of each of the 7 stages (the head belongs
  to the last)."""
  variant: str = "efficientnet_lite0"
  num_classes: int = 0
  depthwise_impl: str = "auto"
  dtype: Any = jnp.float32
  input_size: int = 0  # 0: the variant's own resolution

  @property
  def preprocessing(self) -> Preprocessing:
    return Preprocessing(self.input_size, **LITE) if self.input_size else preprocessing(self.variant)

  @property
  def num_layers(self) -> int:
    return len(block_specs(self.variant)) + 2

  @property
  def stage_starts(self) -> tuple[int, ...]:
    specs, starts = block_specs(self.variant), []
    for i, spec in enumerate(specs):  # a stage starts where the width changes or a stride-2 block begins one
      if i == 0 or spec["cin"] != spec["cout"] or spec["stride"] != 1:
        starts.append(1 + i)
    return tuple(starts)

  @nn.compact
  def __call__(self, x, train: bool = False, span: tuple[int, int] | None = None):
    specs = block_specs(self.variant)
    first, stop = span or (0, self.num_layers)
    if first > 0:
      x = x.astype(self.dtype)
    for i in range(first, stop):
      if i == 0:
        x = self.preprocessing.normalize(x).astype(self.dtype)
        x = _ConvBN(32, kernel=3, stride=2, dtype=self.dtype, name="stem")(x, train)
      elif i <= len(specs):
        x = MBConv(**specs[i - 1], depthwise_impl=self.depthwise_impl, dtype=self.dtype, name=f"block{i - 1}")(
            x, train)
      else:
        x = _ConvBN(1280, dtype=self.dtype, name="head")(x, train)
    if span is not None:
      return x
    grid = x
    pooled = global_avg_pool(grid)
    if self.num_classes:
      return grid, pooled, nn.Dense(self.num_classes, name="classifier")(pooled)
    return grid, pooled
