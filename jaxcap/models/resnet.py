"""ResNet-18/34/50/101/152 in Flax.

style="torchvision": v1.5, stride on the 3x3 conv, no conv biases, BN eps 1e-5, ImageNet mean/std in RGB:
the layout of torchvision's ImageNet checkpoints. style="keras": v1 as in `keras.applications.ResNet50/101/152`:
stride on the first 1x1 conv, conv biases, BN eps 1.001e-5, Caffe preprocessing (BGR, mean only).
Input: uint8 RGB [B, H, W, 3]; the module normalizes with its own `preprocessing`.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from jaxcap.data.preprocessing import CAFFE, IMAGENET, Preprocessing
from jaxcap.models.layers import global_avg_pool

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STYLES = ("torchvision", "keras")


def preprocessing(style: str = "torchvision", size: int = 224) -> Preprocessing:
  return Preprocessing(size, **(IMAGENET if style == "torchvision" else CAFFE))


class ResNet(nn.Module):
  """Returns (grid [B, H/32, W/32, C], pooled [B, C]) and, with num_classes > 0, logits too.

  Its layers, in order: the stem (conv1, bn1, max pool), then one per residual block. `span=(a, b)` runs layers
  a..b-1 only and returns their output (a = 0 takes images): a trunk cached once and the top trained on it
  (`jaxcap.feeds.top`). `stage_starts`: the first layer of each of the 4 stages."""
  depth: int = 50
  style: str = "torchvision"
  num_classes: int = 0
  dtype: Any = jnp.float32
  input_size: int = 0  # 0: 224, the ImageNet weights' resolution

  @property
  def preprocessing(self) -> Preprocessing:
    return preprocessing(self.style, self.input_size or 224)

  @property
  def num_layers(self) -> int:
    return 1 + sum(STAGE_SIZES[self.depth])

  @property
  def stage_starts(self) -> tuple[int, ...]:
    sizes = STAGE_SIZES[self.depth]
    return tuple(1 + sum(sizes[:s]) for s in range(len(sizes)))

  @nn.compact
  def __call__(self, x, train: bool = False, span: tuple[int, int] | None = None):
    if self.depth not in STAGE_SIZES or self.style not in STYLES:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)} and style one of {STYLES}")
    keras = self.style == "keras"
    conv = lambda f, k, s, pad, name: nn.Conv(  # noqa: E731
        f, (k, k), (s, s), padding=[(pad, pad)] * 2, use_bias=keras, dtype=self.dtype, name=name)
    bn = lambda name, zero=False: nn.BatchNorm(  # noqa: E731
        use_running_average=not train, momentum=0.9, epsilon=1.001e-5 if keras else 1e-5, dtype=self.dtype,
        scale_init=nn.initializers.zeros if zero else nn.initializers.ones, name=name)

    first, stop = span or (0, self.num_layers)
    if first == 0 < stop:
      x = self.preprocessing.normalize(x).astype(self.dtype)
      x = nn.relu(bn("bn1")(conv(64, 7, 2, 3, "conv1")(x)))
      # Zero padding equals -inf padding here: inputs are post-ReLU, >= 0 (and it is what Keras does).
      x = nn.max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), (2, 2))
    else:
      x = x.astype(self.dtype)
    bottleneck = self.depth >= 50
    layer = 0  # the stem is layer 0
    for stage, blocks in enumerate(STAGE_SIZES[self.depth]):
      width = 64 * 2 ** stage
      out = width * 4 if bottleneck else width
      for b in range(blocks):
        layer += 1
        if not first <= layer < stop:
          continue
        stride = 2 if stage > 0 and b == 0 else 1
        name = f"layer{stage + 1}_{b}"
        residual = x
        if bottleneck:
          s1, s3 = (stride, 1) if keras else (1, stride)
          y = nn.relu(bn(f"{name}_bn1")(conv(width, 1, s1, 0, f"{name}_conv1")(x)))
          y = nn.relu(bn(f"{name}_bn2")(conv(width, 3, s3, 1, f"{name}_conv2")(y)))
          y = bn(f"{name}_bn3")(conv(out, 1, 1, 0, f"{name}_conv3")(y))
        else:
          y = nn.relu(bn(f"{name}_bn1")(conv(width, 3, stride, 1, f"{name}_conv1")(x)))
          y = bn(f"{name}_bn2")(conv(width, 3, 1, 1, f"{name}_conv2")(y))
        if stride != 1 or x.shape[-1] != out:
          residual = bn(f"{name}_downsample_bn")(conv(out, 1, stride, 0, f"{name}_downsample_conv")(x))
        x = nn.relu(y + residual)
    if span is not None:
      return x
    grid = x
    pooled = global_avg_pool(grid)
    if self.num_classes:
      return grid, pooled, nn.Dense(self.num_classes, name="fc")(pooled)
    return grid, pooled
