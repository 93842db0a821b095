"""jaxcap in the browser: upload photos, read captions, beams and attention maps.

    streamlit run serve_app.py -- --checkpoint workdirs/flickr8k_lite0

The checkpoint can also be set in the sidebar or with JAXCAP_CHECKPOINT. All model work goes through
`jaxcap.inference.Captioner`; all image reading through `jaxcap.data.images.read_image`.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time

import numpy as np
import streamlit as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jaxcap import checkpoint  # noqa: E402
from jaxcap.data.images import ImageError, read_image  # noqa: E402
from jaxcap.inference import Captioner, CheckpointError  # noqa: E402

checkpoint.quiet_orbax_errors()  # a damaged checkpoint is one message on the page, not a log traceback
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif"]


def cli_checkpoint() -> str:
  p = argparse.ArgumentParser()
  p.add_argument("--checkpoint", default=os.environ.get("JAXCAP_CHECKPOINT", ""))
  args, _ = p.parse_known_args(sys.argv[1:])
  return args.checkpoint


@st.cache_resource(show_spinner="Loading the model and compiling it (once)...")
def load_captioner(path: str, max_len: int) -> Captioner:
  cap = Captioner.load(path)
  cap.warm_up(beam_sizes=(1, 3), max_len=max_len)  # the first caption should not pay for a compile
  return cap


def heat_overlay(pixels: np.ndarray, attention: np.ndarray) -> np.ndarray:
  """Image darkened where the word did not look, tinted red where it did. attention [h, w], sums to 1."""
  h, w = pixels.shape[:2]
  a = attention / max(attention.max(), 1e-9)
  ys = (np.arange(h) * a.shape[0] / h).astype(int)
  xs = (np.arange(w) * a.shape[1] / w).astype(int)
  heat = a[ys][:, xs][..., None]
  red = np.zeros_like(pixels, dtype=np.float32)
  red[..., 0] = 255
  out = pixels.astype(np.float32) * (0.25 + 0.75 * heat) + red * 0.35 * heat
  return np.clip(out, 0, 255).astype(np.uint8)


@st.cache_data(show_spinner=False)
def _sample_images(data_dir: str, n: int) -> list[tuple[str, bytes]]:
  from jaxcap.data import DataError, flickr8k
  try:
    src = flickr8k.scan(data_dir, check_images=False)
  except DataError:
    return []
  names = src.splits["test"][:n]
  return [(name, open(os.path.join(src.images_dir, name), "rb").read()) for name in names]


def sample_images(cap: Captioner, n: int = 4) -> list[tuple[str, bytes]]:
  """A few test-split photos of the dataset the checkpoint was trained on, when it is on this machine (read
  once per dataset folder, not on every rerun)."""
  from jaxcap.data import resolve_data_dir
  return _sample_images(resolve_data_dir(cap.config.data), n)


def show_result(name: str, data: bytes, cap: Captioner, beam: int, alpha: float, max_len: int, rows: list):
  try:
    original = read_image(data, name=name)
    t0 = time.perf_counter()
    pixels = cap.preprocess(original, name=name)
    [greedy] = cap.caption_pixels(pixels[None], 1, max_len)
    t1 = time.perf_counter()
    [beamed] = cap.caption_pixels(pixels[None], beam, max_len, alpha) if beam > 1 else [greedy]
    t2 = time.perf_counter()
  except ImageError as e:
    st.error(f"{e}")
    rows.append({"file": name, "greedy": "", "beam": "", "error": str(e)})
    return
  left, right = st.columns([1, 1])
  with left:
    st.image(original, caption=name, width="stretch")
  with right:
    st.markdown(f"**{beamed.caption}**")
    st.caption(f"beam {beam}: {1000 * (t2 - t1):.0f} ms · greedy: {greedy.caption!r} in "
               f"{1000 * (t1 - t0):.0f} ms")
    st.dataframe({"caption": [b.caption for b in beamed.beams], "score": [round(b.score, 3) for b in beamed.beams],
                  "log p": [round(b.log_prob, 3) for b in beamed.beams]}, hide_index=True)
    if beamed.attention is not None and beamed.words:
      word = st.select_slider("attention of word", options=list(range(len(beamed.words))),
                              format_func=lambda i: f"{i + 1}: {beamed.words[i]}", key=f"att-{name}")
      st.image(heat_overlay(pixels, beamed.attention[word]), caption=f"where '{beamed.words[word]}' looked",
               width="stretch")
  rows.append({"file": name, "greedy": greedy.caption, "beam": beamed.caption, "error": ""})


def main():
  st.set_page_config(page_title="jaxcap", layout="wide")
  st.title("jaxcap: image captioning")
  with st.sidebar:
    path = st.text_input("checkpoint (a training workdir)", value=cli_checkpoint(), key="checkpoint")
    beam = st.slider("beam width", 1, 8, 3)
    alpha = st.slider("length penalty alpha", 0.0, 2.0, 1.0, 0.1)
    max_len = st.slider("maximum length", 5, 30, 20)
  if not path:
    st.info("No checkpoint yet. Train one in one command, `python train.py` (synthetic data, a few minutes), "
            "then `streamlit run serve_app.py -- --checkpoint workdirs/quickstart`.")
    return
  try:
    cap = load_captioner(path, max_len)
  except CheckpointError as e:
    st.error(str(e))
    st.info("Train one with `python train.py`, or point the sidebar at a training workdir.")
    return
  for warning in cap.warnings:  # a damaged best checkpoint: the app runs on the next one, and says so
    st.warning(warning)
  st.caption(f"model: {cap.config.model.encoder} + {cap.mode} decoder, step {cap.step}, {len(cap.vocab)} words")
  uploads = st.file_uploader("Photos", type=UPLOAD_TYPES, accept_multiple_files=True)
  files = [(u.name, u.getvalue()) for u in uploads or []]
  if st.checkbox("try sample photos from the test split"):
    files += sample_images(cap)
  rows: list[dict] = []
  for name, data in files:
    show_result(name, data, cap, beam, alpha, max_len, rows)
    st.divider()
  if rows:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["file", "greedy", "beam", "error"])
    writer.writeheader()
    writer.writerows(rows)
    st.download_button("Download captions (CSV)", buf.getvalue(), "captions.csv", "text/csv")


main()
