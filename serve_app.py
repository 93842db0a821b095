"""jaxcap in the browser: upload photos, read captions, beams and attention maps.

    streamlit run serve_app.py -- --checkpoint workdirs/flickr8k_lite0
    streamlit run serve_app.py -- --checkpoint workdirs/seed0 --checkpoint workdirs/seed1   # an ensemble

The checkpoint can also be set in the sidebar or with JAXCAP_CHECKPOINT. Several --checkpoint make an
ensemble (`jaxcap.inference.Captioner`: same vocabulary, any encoders), each member in a sidebar field of its
own. All model work goes through one
`jaxcap.serving.CaptionService` per checkpoint (kept in st.cache_resource, so shared by every session): it
batches the requests of all sessions and calls `jaxcap.inference.Captioner`. Uploads are decoded once and
their captions cached by content and decoding settings (bounded LRUs in the same resource), so a rerun that
changes only the view (an attention slider, another photo's upload) never runs the model again; the attention
view of each photo is a fragment, so moving its slider reruns only that view. All image reading goes through
`jaxcap.data.images.read_image`. JAXCAP_SERVING_STATS=path makes the service write its counters (batches,
model calls) there after every batch, for benchmarks.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import gc
import hashlib
import io
import json
import os
import sys

import numpy as np
import streamlit as st
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jaxcap import allocator, logs  # noqa: E402
from jaxcap.checkpoint import CheckpointError  # noqa: E402
from jaxcap.data.images import ImageError, read_image  # noqa: E402
from jaxcap.inference import Captioner  # noqa: E402
from jaxcap.serving import LRU, Busy, Captions, CaptionService, Request  # noqa: E402

logs.install()  # a damaged checkpoint is one message on the page, not a log traceback
allocator.for_backend()  # glibc malloc keeps freed step buffers for reuse (CPU only)
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif"]
DISPLAY_MAX = 640        # pixels on the long side of the copy the page shows (uploads can be 7000 px)
WAIT_S = 60.0            # a request not answered by then gets the "busy, retry" message
DEFAULTS = Request(beam_size=3, max_len=20, alpha=1.0)   # the sidebar's defaults: compiled at start-up


def cli_checkpoints() -> list[str]:
  """--checkpoint, repeated for an ensemble (default: JAXCAP_CHECKPOINT, one checkpoint)."""
  p = argparse.ArgumentParser()
  p.add_argument("--checkpoint", action="append", default=None)
  args, _ = p.parse_known_args(sys.argv[1:])
  return args.checkpoint or [os.environ.get("JAXCAP_CHECKPOINT", "")]


@dataclasses.dataclass
class Server:
  """What every session shares for one checkpoint (or ensemble)."""
  captioner: Captioner
  service: CaptionService
  uploads: LRU             # sha1 of the bytes -> Upload
  results: LRU             # (sha1, beam, max_len, alpha) -> Captions


@dataclasses.dataclass
class Upload:
  pixels: np.ndarray       # [S, S, 3] uint8, what the encoder sees
  display: bytes           # JPEG, at most DISPLAY_MAX on the long side
  size: tuple[int, int]    # the upload's (width, height)


@st.cache_resource(show_spinner="Loading the model and compiling it (once)...", max_entries=2,
                   on_release=lambda server: server.service.close())
def load_server(paths: tuple[str, ...]) -> Server:
  cap = Captioner.load(paths)
  # Compiles the encoder, greedy and the default beam search for every batch size the worker uses, so no
  # request pays for a compile.
  service = CaptionService(cap, warm=(DEFAULTS,), stats_path=os.environ.get("JAXCAP_SERVING_STATS") or None)
  # Streamlit runs a full garbage collection after every script run (runner.postScriptGC, and again through
  # keras.backend.clear_session because TensorFlow imports Keras). Over the ~550k objects JAX, TF and the
  # model leave behind that took ~0.35 s per rerun, holding the GIL for every session. Those objects live as
  # long as the server: moved out of the collector's sight, a collection sees only what requests create.
  gc.collect()
  gc.freeze()
  return Server(cap, service, LRU(64), LRU(1024))


def jpeg(pixels: np.ndarray, quality: int = 85) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def prepare(cap: Captioner, data: bytes, name: str) -> Upload:
  """Decodes an upload once: the encoder's pixels and a display copy. Raises ImageError."""
  original = read_image(data, name=name)
  pixels = cap.preprocess(original, name=name)
  im = Image.fromarray(original)
  if max(im.size) > DISPLAY_MAX:
    im.thumbnail((DISPLAY_MAX, DISPLAY_MAX), Image.Resampling.BILINEAR, reducing_gap=2.0)
  return Upload(pixels, jpeg(np.asarray(im)), (original.shape[1], original.shape[0]))


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
def _sample_images(data_json: str, n: int) -> list[tuple[str, bytes]]:
  import ml_collections

  from jaxcap.data import dataset
  return dataset.sample_images(ml_collections.ConfigDict(json.loads(data_json)), n)


def sample_images(cap: Captioner, n: int = 4) -> list[tuple[str, bytes]]:
  """A few test-split photos of the dataset the checkpoint was trained on (whatever its data.dataset), when it
  is on this machine (read once per dataset, not on every rerun)."""
  return _sample_images(cap.config.data.to_json(), n)


@dataclasses.dataclass
class Item:
  """One uploaded file on this run: its upload and captions, or why there are none."""
  name: str
  digest: str = ""
  upload: Upload | None = None
  captions: Captions | None = None
  cached: bool = False
  future: concurrent.futures.Future | None = None
  error: str = ""
  busy: str = ""


def submit_all(server: Server, files: list[tuple[str, bytes]], request: Request) -> list[Item]:
  """Looks every file up in the caches, decodes the new ones, then queues every miss at once (so one session's
  photos share a batch). Decoding errors stay with their file; a full queue gives that file a busy message."""
  items = []
  for name, data in files:
    item = Item(name, hashlib.sha1(data).hexdigest())
    items.append(item)
    item.upload = server.uploads.get(item.digest)
    if item.upload is None:
      try:
        item.upload = prepare(server.captioner, data, name)
      except ImageError as e:
        item.error = str(e)
        continue
      server.uploads.put(item.digest, item.upload)
    item.captions = server.results.get((item.digest, request))
    item.cached = item.captions is not None
  for item in items:
    if item.upload is not None and item.captions is None:
      try:
        item.future = server.service.submit(item.upload.pixels, request)
      except Busy as e:
        item.busy = str(e)
  return items


def wait(server: Server, item: Item, request: Request) -> None:
  if item.future is None:
    return
  try:
    item.captions = item.future.result(timeout=WAIT_S)
    server.results.put((item.digest, request), item.captions)
  except concurrent.futures.TimeoutError:
    item.future.cancel()
    item.busy = f"the server is busy (no answer in {WAIT_S:.0f} s); retry in a moment"
  except Exception as e:  # noqa: BLE001  (a failed request is this file's error, not the page's)
    item.error = f"{item.name}: captioning failed ({type(e).__name__}: {e})"


@st.fragment
def attention_view(key: str, display: bytes, words: list[str], attention: np.ndarray):
  """The heat map of one word; moving the slider reruns only this fragment (no model, one overlay)."""
  word = st.select_slider("attention of word", options=list(range(len(words))),
                          format_func=lambda i: f"{i + 1}: {words[i]}", key=key)
  pixels = np.asarray(Image.open(io.BytesIO(display)).convert("RGB"))
  st.image(jpeg(heat_overlay(pixels, attention[word])), caption=f"where word {word + 1}, '{words[word]}', looked",
           width="stretch")


def show_result(i: int, item: Item, request: Request, rows: list):
  if item.error:
    st.error(item.error)
    rows.append({"file": item.name, "greedy": "", "beam": "", "error": item.error})
    return
  if item.busy:
    st.warning(f"{item.name}: {item.busy}")
    st.button("Retry", key=f"retry-{i}-{item.digest[:12]}")   # a click reruns the page, which resubmits
    rows.append({"file": item.name, "greedy": "", "beam": "", "error": item.busy})
    return
  greedy, beamed = item.captions.greedy, item.captions.beam
  left, right = st.columns([1, 1])
  with left:
    w, h = item.upload.size
    st.image(item.upload.display, caption=f"{item.name} ({w}x{h})", width="stretch")
  with right:
    st.markdown(f"**{beamed.caption}**")
    how = f"{1000 * item.captions.model_s:.0f} ms of model time in a batch of {item.captions.batch}"
    how += " (cached)" if item.cached else ""
    st.caption(f"beam {request.beam_size} · greedy: {greedy.caption!r} · {how}")
    # The beams as a Markdown table: st.table/st.dataframe would build a pandas frame and Arrow bytes for it.
    st.markdown("| caption | score | log p |\n| --- | ---: | ---: |\n" + "\n".join(
        f"| {b.caption} | {b.score:.3f} | {b.log_prob:.3f} |" for b in beamed.beams))
    if beamed.attention is not None and beamed.words:
      attention_view(f"att-{i}-{item.digest[:12]}", item.upload.display, beamed.words, beamed.attention)
  rows.append({"file": item.name, "greedy": greedy.caption, "beam": beamed.caption, "error": ""})


def main():
  st.set_page_config(page_title="jaxcap", layout="wide")
  st.title("jaxcap: image captioning")
  with st.sidebar:
    first, *more = cli_checkpoints()
    path = st.text_input("checkpoint (a training workdir)", value=first, key="checkpoint")
    # Further ensemble members: a field each, only when the command line named them.
    more = [st.text_input(f"ensemble member {i}", value=m, key=f"checkpoint-{i}") for i, m in enumerate(more, 2)]
    beam = st.slider("beam width", 1, 8, DEFAULTS.beam_size)
    alpha = st.slider("length penalty alpha", 0.0, 2.0, DEFAULTS.alpha, 0.1)
    max_len = st.slider("maximum length", 5, 30, DEFAULTS.max_len)
  if not path:
    st.info("No checkpoint yet. Train one in one command, `python train.py` (synthetic data, a few minutes), "
            "then `streamlit run serve_app.py -- --checkpoint workdirs/quickstart`.")
    return
  try:
    server = load_server(tuple(p for p in (path, *more) if p))
  except CheckpointError as e:
    st.error(str(e))
    st.info("Train one with `python train.py`, or point the sidebar at a training workdir.")
    return
  cap = server.captioner
  for warning in cap.warnings:  # a damaged best checkpoint: the app runs on the next one, and says so
    st.warning(warning)
  members = "; ".join(f"{m.config.model.encoder} + {m.mode} decoder, step {m.step}" for m in cap.members)
  rerank = (f"; beams re-ranked by consensus with the {cap.reranker.index.k} nearest train photos (weight "
            f"{cap.reranker.index.weight:g})" if cap.reranker and cap.reranker.index.weight > 0 else "")
  st.caption(f"model: {members}, {len(cap.vocab)} words{rerank}")
  uploads = st.file_uploader("Photos", type=UPLOAD_TYPES, accept_multiple_files=True)
  files = [(u.name, u.getvalue()) for u in uploads or []]
  if st.checkbox("try sample photos from the test split"):
    files += sample_images(cap)
  request = Request(beam, max_len, round(float(alpha), 2))
  items = submit_all(server, files, request)
  rows: list[dict] = []
  for i, item in enumerate(items):
    wait(server, item, request)   # the page fills in as the batches come back
    show_result(i, item, request, rows)
    st.divider()
  if rows:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["file", "greedy", "beam", "error"])
    writer.writeheader()
    writer.writerows(rows)
    st.download_button("Download captions (CSV)", buf.getvalue(), "captions.csv", "text/csv")


main()
