"""Parsing a COCO-sized Karpathy JSON: time and peak memory of `jaxcap.data.karpathy.parse`.

    python -m bench.karpathy_json [--images 123287] [--dir /tmp/jaxcap_karpathy_bench] [--repeats 3] [--keep]

Generates a dataset_coco.json like Karpathy's (123,287 images: train 82,783, restval 30,504, val 5,000,
test 5,000; 5 sentences each with `raw` and `tokens`; `filepath` train2014/val2014), then parses it in a
fresh child process per repeat: seconds (median, min, max) and the child's peak RSS (VmHWM) before and after
parsing. Prints one JSON object; deletes the file unless --keep.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from bench.common import emit, machine

SPLITS = (("train", 82_783), ("restval", 30_504), ("val", 5_000), ("test", 5_000))
WORDS = ("a man woman dog cat two people street table with of on in the is are sitting standing holding "
         "near next to large small white black red blue group plate food bus train field grass water "
         "playing riding looking baseball tennis player kitchen room bathroom pizza sign").split()


def generate(path: str, images: int, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  scale = images / sum(n for _, n in SPLITS)
  out, sentid = [], 0
  for split, n in SPLITS:
    for _ in range(round(n * scale)):
      i = len(out)
      folder = "train2014" if split == "train" else "val2014"
      sentences = []
      for _ in range(5):
        tokens = [WORDS[k] for k in rng.integers(0, len(WORDS), rng.integers(8, 16))]
        sentences.append({"tokens": tokens, "raw": " ".join(tokens).capitalize() + ".", "imgid": i,
                          "sentid": sentid})
        sentid += 1
      out.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences],
                  "filename": f"COCO_{folder}_{i:012d}.jpg", "imgid": i, "split": split,
                  "sentences": sentences, "cocoid": i})
  with open(path, "w") as f:
    json.dump({"images": out, "dataset": "coco"}, f)


def _vm(key: str) -> int:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def child(path: str) -> dict:
  from jaxcap.data import karpathy
  base_rss = _vm("VmRSS")
  t0 = time.perf_counter()
  captions, splits, problems, counts = karpathy.parse(path, use_restval=True)
  seconds = time.perf_counter() - t0
  return {"seconds": seconds, "rss_before_gb": base_rss / 2**30, "peak_rss_gb": _vm("VmHWM") / 2**30,
          "rss_after_gb": _vm("VmRSS") / 2**30, "images": len(captions),
          "splits": {s: len(v) for s, v in splits.items()}, "karpathy_splits": counts, "problems": len(problems),
          "captions": sum(len(c) for c in captions.values())}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--images", type=int, default=123_287)
  p.add_argument("--dir", default="/tmp/jaxcap_karpathy_bench")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--keep", action="store_true")
  p.add_argument("--child", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.child:
    print(json.dumps(child(a.child)))
    return
  os.makedirs(a.dir, exist_ok=True)
  path = os.path.join(a.dir, "dataset_coco.json")
  try:
    t0 = time.perf_counter()
    generate(path, a.images)
    result = {"bench": "karpathy_json", "file_mb": os.path.getsize(path) / 2**20,
              "generate_s": time.perf_counter() - t0}
    runs = []
    for _ in range(a.repeats):
      out = subprocess.run([sys.executable, "-m", "bench.karpathy_json", "--child", path], capture_output=True,
                           text=True, check=True)
      runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    secs = [r["seconds"] for r in runs]
    result.update(parse_s_median=statistics.median(secs), parse_s_min=min(secs), parse_s_max=max(secs),
                  peak_rss_gb=max(r["peak_rss_gb"] for r in runs),
                  rss_before_gb=runs[0]["rss_before_gb"], rss_after_gb=runs[0]["rss_after_gb"],
                  **{k: runs[0][k] for k in ("images", "captions", "splits", "karpathy_splits", "problems")})
  finally:
    if not a.keep and os.path.exists(path):
      os.remove(path)
  result["machine"] = machine()
  emit(result)


if __name__ == "__main__":
  main()
