"""Image augmentation on the devices, inside the jitted step: the decoded fine-tune feed's
(`feeds.images.DecodedImages`) uint8 batches are cropped and colour-jittered where they already are, so the host
does no per-step image work.

The same distribution as the tf.data path's (`jaxcap.data.pipeline._augment`): a square crop of 0.8..1.0 of
the side at a random place, resized back (bilinear), brightness +-0.1 * 255 and contrast 0.9..1.1 (about each
channel's mean, as `tf.image.adjust_contrast`); in addition a mild saturation jitter (0.9..1.1, a blend with the
grey image), which tf.data's does not have. No horizontal flip, as in the tf.data path: it would make "left" and
"right" in the captions wrong (the synthetic captions say "left of" / "right of"; Flickr8k's say "on the left").

Deterministic per step: the draws come from `key(seed, step)` alone, so a resumed run augments step s exactly
as the uninterrupted one did, whichever devices hold the batch (threefry random bits do not depend on sharding).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CROP_SCALE = (0.8, 1.0)        # crop side / image side
BRIGHTNESS = 0.1 * 255         # added to every pixel, uniform in +-
CONTRAST = (0.9, 1.1)          # factor about each channel's mean
SATURATION = (0.9, 1.1)        # factor about the grey image
GREY = (0.299, 0.587, 0.114)   # ITU-R 601 luma weights
_STREAM = 0x617567             # folded into the seed: these draws share no stream with the train state's rng


def key(seed: int, step) -> jax.Array:
  """The augmentation key of train step `step` (a traced int inside the step)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _STREAM), step)


def augment(images: jax.Array, rng: jax.Array) -> jax.Array:
  """images [B, H, W, 3] uint8 -> [B, H, W, 3] uint8, each image cropped and jittered with its own draws."""
  b, h, w, _ = images.shape
  k_scale, k_y, k_x, k_bright, k_contrast, k_sat = jax.random.split(rng, 6)
  uniform = lambda k, lo, hi: jax.random.uniform(k, (b,), jnp.float32, lo, hi)  # noqa: E731
  scale = uniform(k_scale, *CROP_SCALE)
  y0 = uniform(k_y, 0.0, 1.0) * h * (1.0 - scale)   # the crop's corner, anywhere it fits
  x0 = uniform(k_x, 0.0, 1.0) * w * (1.0 - scale)

  def crop(img, s, y, x):  # output coordinate = (input coordinate - corner) / s
    return jax.image.scale_and_translate(img, (h, w, 3), (0, 1), jnp.stack([1 / s, 1 / s]),
                                         jnp.stack([-y / s, -x / s]), method="linear", antialias=True)

  x = jax.vmap(crop)(images.astype(jnp.float32), scale, y0, x0)
  x = x + uniform(k_bright, -BRIGHTNESS, BRIGHTNESS)[:, None, None, None]
  mean = x.mean(axis=(1, 2), keepdims=True)
  x = (x - mean) * uniform(k_contrast, *CONTRAST)[:, None, None, None] + mean
  grey = (x @ jnp.asarray(GREY, jnp.float32))[..., None]
  x = grey + (x - grey) * uniform(k_sat, *SATURATION)[:, None, None, None]
  return jnp.round(jnp.clip(x, 0.0, 255.0)).astype(jnp.uint8)
