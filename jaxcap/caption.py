"""Caption image files and folders (e.g. alt text for a website).

    python -m jaxcap.caption --checkpoint workdirs/flickr8k_lite0 photos/ extra.jpg --format jsonl
    python -m jaxcap.caption --checkpoint workdirs/seed0 --checkpoint workdirs/seed1 photos/   # an ensemble

Folders are searched recursively for image files. Every input gets one record: text `PATH<TAB>caption`
(or `PATH<TAB>ERROR: ...`), JSONL `{"path", "caption"}` / `{"path", "error"}`, or CSV `path,caption,error`.
An unreadable file gets its error and the run goes on; the exit code is 1 if any file failed, else 0.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def expand(paths: list[str]) -> list[str]:
  """Files as given (whatever their extension, so a wrong one gets an error record); folders recursively."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      for root, dirs, files in os.walk(p):
        dirs.sort()
        out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
      out.append(p)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxcap.caption", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, action="append",
                 help="workdir (its best checkpoint) or a step directory; repeat it for an ensemble (same "
                 "vocabulary, any encoders; words scored by the mean of the members' log-probabilities)")
  p.add_argument("--beam", type=int, default=3, help="beam size; 1 = greedy")
  p.add_argument("--alpha", type=float, default=1.0, help="length penalty exponent (1.0: best on Flickr8k dev)")
  p.add_argument("--max_len", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--format", choices=("text", "jsonl", "csv"), default="text")
  p.add_argument("paths", nargs="+", help="image files and/or folders")
  a = p.parse_args(argv)

  import numpy as np

  from jaxcap import allocator, logs
  from jaxcap.checkpoint import CheckpointError
  from jaxcap.data.images import ImageError
  from jaxcap.inference import Captioner

  logs.install()
  allocator.for_backend()  # glibc malloc keeps freed step buffers for reuse (CPU only)

  try:
    cap = Captioner.load(a.checkpoint, warn=lambda m: print(m, file=sys.stderr))
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  files = expand(a.paths)
  if not files:
    print("error: no image files found in " + " ".join(a.paths), file=sys.stderr)
    return 2
  writer = csv.writer(sys.stdout) if a.format == "csv" else None
  if writer:
    writer.writerow(["path", "caption", "error"])

  def emit(path, caption=None, error=None):
    if a.format == "jsonl":
      print(json.dumps({"path": path, "caption": caption} if error is None else {"path": path, "error": error}))
    elif writer:
      writer.writerow([path, caption or "", error or ""])
    else:
      print(f"{path}\t{caption}" if error is None else f"{path}\tERROR: {error}")
    sys.stdout.flush()

  failed = 0
  for i in range(0, len(files), a.batch_size):
    chunk = files[i:i + a.batch_size]
    pixels, ok, errors = [], [], {}
    for f in chunk:
      try:
        pixels.append(cap.preprocess(f, name=f))
        ok.append(f)
      except ImageError as e:
        errors[f] = str(e)
    captions = {}
    if pixels:
      # Always a.batch_size rows (the last chunk padded): one compiled shape for the whole run.
      results = cap.caption_pixels(np.stack(pixels), a.beam, a.max_len, a.alpha, batch_size=a.batch_size)
      captions = {f: r.caption for f, r in zip(ok, results)}
    for f in chunk:  # input order
      if f in errors:
        failed += 1
        emit(f, error=errors[f])
      else:
        emit(f, caption=captions[f])
  if failed:
    print(f"{failed} of {len(files)} file(s) failed", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
