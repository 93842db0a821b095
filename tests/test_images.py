"""Reading user images: EXIF orientation, every pixel mode, animations, bad inputs with one clear error."""

import io

import numpy as np
import pytest
from PIL import Image

from jaxcap.data.images import ImageError, read_image


def _bytes(im, fmt, **kw):
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kw)
  return buf.getvalue()


def test_exif_orientation_is_applied():
  im = Image.new("RGB", (40, 20), (255, 0, 0))
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 CW on display
  out = read_image(_bytes(im, "JPEG", exif=exif))
  assert out.shape == (40, 20, 3)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_modes_become_8bit_rgb(mode):
  if mode == "I;16":
    im = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    fmt = "PNG"
  else:
    im = Image.new("RGB", (32, 32), (10, 200, 30)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
  out = read_image(_bytes(im, fmt))
  assert out.dtype == np.uint8 and out.shape == (im.size[1], im.size[0], 3)
  if mode == "I;16":
    assert out.max() == 255 and out.min() == 0


def test_transparent_pixels_go_on_white():
  im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
  assert (read_image(_bytes(im, "PNG")) == 255).all()


def test_first_frame_of_an_animation():
  frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
  buf = io.BytesIO()
  frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
  out = read_image(buf.getvalue())
  assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_webp_and_bmp():
  im = Image.new("RGB", (16, 12), (1, 2, 3))
  for fmt in ("WEBP", "BMP"):
    assert read_image(_bytes(im, fmt)).shape == (12, 16, 3)


def test_bad_inputs_get_one_clear_error(tmp_path):
  with pytest.raises(ImageError, match="x.jpg: empty file"):
    read_image(b"", name="x.jpg")
  with pytest.raises(ImageError, match="notes.txt: not an image"):
    read_image(b"hello, not an image", name="notes.txt")
  data = _bytes(Image.new("RGB", (64, 64), (5, 5, 5)), "JPEG")
  with pytest.raises(ImageError, match="cut.jpg: truncated or corrupt"):
    read_image(data[: len(data) // 2], name="cut.jpg")
  with pytest.raises(ImageError, match="big.png: image too large"):
    read_image(_bytes(Image.new("L", (3000, 3000)), "PNG"), name="big.png", max_pixels=1_000_000)
  with pytest.raises(ImageError, match="no such file"):
    read_image(str(tmp_path / "missing.jpg"))


def test_arrays_pass_through():
  a = np.random.default_rng(0).integers(0, 255, (5, 6, 3)).astype(np.uint8)
  np.testing.assert_array_equal(read_image(a), a)
  assert read_image(a[..., 0]).shape == (5, 6, 3)
