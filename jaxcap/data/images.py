"""Reading one user image (CLI, app, Captioner): the single place that turns a file or upload into pixels.

EXIF orientation is applied; grayscale, palette, RGBA (over white), CMYK, 16-bit and other modes become 8-bit
RGB; animations give their first frame. Oversized images are refused before decoding (decompression bombs).
Every failure is an `ImageError` whose message names the input and the problem in one line.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # ~7000 x 7000; larger uploads are refused before they are decoded
ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class ImageError(ValueError):
  """An input that is not a usable image."""


def _to_rgb(im: Image.Image) -> Image.Image:
  if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits by the value range
    a = np.asarray(im, dtype=np.float64)
    hi = a.max() if a.max() > 0 else 1.0
    im = Image.fromarray(np.round(a / hi * 255).astype(np.uint8), "L")
  if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return im.convert("RGB")


def read_image(source: ImageInput, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Any supported input -> uint8 RGB [H, W, 3]."""
  if isinstance(source, np.ndarray):
    a = source
    if a.ndim == 2:
      a = np.stack([a] * 3, -1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
      raise ImageError(f"{name or 'array'}: expected [H, W, 3] pixels, got shape {a.shape}")
    if a.dtype != np.uint8:
      a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])
  label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
  try:
    if isinstance(source, Image.Image):
      im = source
    else:
      if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
          raise ImageError(f"{label}: no such file")
        try:
          with open(source, "rb") as f:
            data = f.read()
        except OSError as e:  # permission denied, I/O error: the file is fine or not, we cannot tell
          raise ImageError(f"{label}: cannot read file ({e.strerror or e})") from None
      else:
        data = bytes(source)
      if not data:
        raise ImageError(f"{label}: empty file")
      im = Image.open(io.BytesIO(data))
    w, h = im.size
    if w * h > max_pixels:
      raise ImageError(f"{label}: image too large ({w}x{h} = {w * h / 1e6:.0f} MP; the limit is "
                       f"{max_pixels / 1e6:.0f} MP)")
    if getattr(im, "n_frames", 1) > 1:
      im.seek(0)
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      im.load()
      im = ImageOps.exif_transpose(im)
      return np.asarray(_to_rgb(im))
  except ImageError:
    raise
  except UnidentifiedImageError:
    raise ImageError(f"{label}: not an image (unrecognized format)") from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageError(f"{label}: refused as a decompression bomb ({e})") from None
  except OSError as e:
    raise ImageError(f"{label}: truncated or corrupt image ({e})") from None
  except Exception as e:  # PIL raises assorted types on malformed files
    raise ImageError(f"{label}: cannot decode image ({type(e).__name__}: {e})") from None


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
  """The training pipeline's resize (bilinear, antialiased, rounded), so serving sees training's pixels."""
  from jaxcap.data import pipeline
  from jaxcap.data.tf_setup import tf
  return pipeline.resize_uint8(tf.constant(pixels), size).numpy()
