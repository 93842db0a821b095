"""Layers the encoders share: TF-style 'SAME' padding and a depthwise convolution with a per-platform kernel."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME' padding (low, high) for one spatial axis: extra padding goes on the high side."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
  """Depthwise conv as k*k strided slices times per-channel weights, summed.

  x [B, H, W, C], kernel [k, k, 1, C], padding ((lo, hi), (lo, hi)). On XLA:CPU this fuses into one loop
  and runs several times faster than `feature_group_count` convolution at EfficientNet's shapes (see
  bench/encoder.py); the math is identical.
  """
  k = kernel.shape[0]
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  b, h, w, c = x.shape
  oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
  out = None
  for i in range(k):
    for j in range(k):
      patch = lax.slice(x, (0, i, j, 0), (b, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                        (1, stride, stride, 1))
      term = patch * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
  """The same depthwise conv through XLA's grouped convolution (the right kernel on GPU/TPU)."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=x.shape[-1])


def resolve_depthwise_impl(impl: str) -> str:
  """The kernel `impl` means in this process ("auto": by JAX's default backend)."""
  if impl == "auto":
    return "shifted" if jax.default_backend() == "cpu" else "conv"
  if impl not in ("shifted", "conv"):
    raise ValueError(f"depthwise_impl must be 'auto', 'shifted' or 'conv', got {impl!r}")
  return impl


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution, TF 'SAME' padding, no bias; kernel [k, k, 1, C] like `nn.Conv` grouped."""
  kernel_size: int
  stride: int = 1
  impl: str = "auto"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel_size, self.kernel_size, 1, c))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    padding = tuple(same_padding(s, self.kernel_size, self.stride) for s in x.shape[1:3])
    shifted = lambda x, k: depthwise_shifted(x, k, self.stride, padding)  # noqa: E731
    grouped = lambda x, k: depthwise_conv(x, k, self.stride, padding)  # noqa: E731
    if self.impl == "auto":  # chosen when the program is lowered for its platform (jaxcap.aot lowers for TPU on a CPU)
      return lax.platform_dependent(x, kernel, cpu=shifted, default=grouped)
    return shifted(x, kernel) if resolve_depthwise_impl(self.impl) == "shifted" else grouped(x, kernel)


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
