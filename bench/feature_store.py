"""A COCO-sized feature store: 113,287 random 7x7x1280 float16 grids on disk (14 GB), the decoder trained on them
for 200 steps at batch 64 streaming the grids from disk, next to the in-memory feed in the same run.

    python -m bench.feature_store [--dir /tmp/jaxcap_store_bench] [--steps 200] [--memory_gb 2] [--keep]

1. Writes <dir>/train.npy through `feature_cache.RowWriter` (the cache's own writer), timed.
2. Drops the file from the OS page cache (fsync + posix_fadvise DONTNEED: this file only), so the streamed
   phase starts cold and really reads the disk.
3. Two child processes, one per feed, each training the shipped Flickr8k decoder (attend, deep output, 512;
   vocabulary 3,000) with the trainer's own pieces (`feeds.grid_batches`, `train_lib.prefetch`, the jitted
   train step) on the same batch schedule (5 captions per image, lengths 8-22, length-bucketed):
   - stream: `feature_cache.FeatureRows` over the whole file (only each batch's rows are read);
   - memory: the rows that fit in --memory_gb loaded into host memory (`np.ndarray`), batches indexing them
     modulo that count (the full 14 GB in RAM would starve this shared 23 GB machine; the gather a batch does
     costs the same whatever the array's length).
   Every batch shape is compiled before the timed steps. Each child reports captions/s over the timed steps,
   its peak RSS (VmHWM: everything the process held at its peak, JAX, XLA and TensorFlow included; the page
   cache is the kernel's and is not in it) and the bytes it read from storage (/proc/self/io read_bytes).
4. "read": the same batches' rows read cold again (page cache dropped) with no training: how fast the store
   alone delivers, i.e. the headroom over the step (what an accelerator's faster step would need).
Prints one JSON object; deletes the store unless --keep.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from bench.common import emit, machine

N, GRID, CAPS = 113_287, (7, 7, 1280), 5


def write_store(path: str, n: int, seed: int = 0) -> float:
  """Random finite float16 grids (|x| < 1), written batch by batch; seconds taken."""
  from jaxcap import feature_cache
  t0 = time.perf_counter()
  rng = np.random.default_rng(seed)
  w = feature_cache.RowWriter(path, n, GRID, np.float16)
  per_row = int(np.prod(GRID))
  for i in range(0, n, 512):
    k = min(512, n - i)
    bits = np.frombuffer(rng.bytes(2 * k * per_row), np.uint16) & np.uint16(0xBBFF)  # exponent <= 14: finite
    w.write(bits.view(np.float16).reshape((k,) + GRID))
  w.close()
  return time.perf_counter() - t0


def drop_from_page_cache(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
  finally:
    os.close(fd)


def proc_status() -> dict:
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      k, _, v = line.partition(":")
      if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
        out[k] = int(v.split()[0]) * 1024
  with open("/proc/self/io") as f:
    io = dict(line.strip().split(": ") for line in f)
  out["read_bytes"] = int(io["read_bytes"])
  return out


def read_only(a) -> dict:
  """The streamed store alone, cold: the batches of the timed steps read with no training (its headroom)."""
  from jaxcap import feature_cache
  from jaxcap.data import batching
  rows = feature_cache.FeatureRows(a.path)
  lengths = np.random.default_rng(1).integers(10, 25, len(rows) * CAPS).astype(np.int32)
  schedule = batching.Schedule(lengths, a.batch_size, seed=0)
  image_index = np.repeat(np.arange(len(rows), dtype=np.int32), CAPS)
  before, t0 = proc_status(), time.perf_counter()
  for s in range(a.steps):
    rows[image_index[schedule.batch(s)]]
  elapsed = time.perf_counter() - t0
  after = proc_status()
  return {"batches_per_s": a.steps / elapsed, "captions_per_s": a.steps * a.batch_size / elapsed,
          "ms_per_batch": 1000 * elapsed / a.steps, "peak_rss_gb": after["VmHWM"] / 2**30,
          "read_from_storage_gb": (after["read_bytes"] - before["read_bytes"]) / 2**30}


def phase(a) -> dict:
  """One feed's run (in its own process, so its peak RSS is its own)."""
  import jax

  from bench.decoder import make_jax_train_step
  from jaxcap import feature_cache, feeds, train_lib
  from jaxcap.data import batching

  t_setup = time.perf_counter()
  step_fn, state, _ = make_jax_train_step(a.batch_size, 22, deep_output=True)
  step = jax.jit(step_fn, donate_argnums=0)
  rows = feature_cache.FeatureRows(a.path)
  n = len(rows)
  rng = np.random.default_rng(1)
  lengths = rng.integers(10, 25, n * CAPS).astype(np.int32)  # <start> + 8..22 words + <end>
  tokens = rng.integers(4, 3000, (n * CAPS, 24)).astype(np.int32)
  tokens[np.arange(24)[None, :] >= lengths[:, None]] = 0
  image_index = np.repeat(np.arange(n, dtype=np.int32), CAPS)
  if a.phase == "memory":
    keep = min(n, int(a.memory_gb * 2**30) // rows[:1].nbytes)
    grids, image_index = rows[:keep].load(), image_index % keep
    held = f"{keep} of {n} grids in host memory ({grids.nbytes / 2**30:.2f} GB)"
  else:
    grids, held = rows, f"all {n} grids streamed from disk ({rows.nbytes / 2**30:.2f} GB file)"
  pairs = batching.CaptionPairs(image_index, tokens, lengths)
  schedule = batching.Schedule(lengths, a.batch_size, seed=0)
  put = lambda b: jax.device_put(b)  # noqa: E731

  # Compile every batch shape of the timed steps first (one step each, from a batch of that shape).
  first_of = {}
  for s in range(a.steps):
    first_of.setdefault(schedule.padded_length(schedule.batch(s), 24), s)
  t_compile = time.perf_counter()
  for s in first_of.values():
    state, m = step(state, put(next(feeds.grid_batches(grids, pairs, schedule, 24, s, s + 1))))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t_compile
  before = proc_status()

  t0 = time.perf_counter()
  for batch in train_lib.prefetch(map(put, feeds.grid_batches(grids, pairs, schedule, 24, 0, a.steps))):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  elapsed = time.perf_counter() - t0
  after = proc_status()
  return {"feed": a.phase, "held": held, "steps": a.steps, "batch": a.batch_size,
          "captions_per_s": a.steps * a.batch_size / elapsed, "timed_s": elapsed,
          "setup_s": t_compile - t_setup, "compile_warmup_s": compile_s, "shapes": len(first_of),
          "peak_rss_gb": after["VmHWM"] / 2**30, "end_rss_gb": after["VmRSS"] / 2**30,
          "end_rss_anon_gb": after["RssAnon"] / 2**30, "end_rss_file_gb": after["RssFile"] / 2**30,
          "read_from_storage_during_steps_gb": (after["read_bytes"] - before["read_bytes"]) / 2**30,
          "final_loss": float(m["loss"])}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dir", default="/tmp/jaxcap_store_bench")
  p.add_argument("--rows", type=int, default=N)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--memory_gb", type=float, default=2.0, help="host memory the in-memory feed's grids may take")
  p.add_argument("--keep", action="store_true", help="keep the store on disk")
  p.add_argument("--phase", choices=("stream", "memory", "read"), help=argparse.SUPPRESS)
  p.add_argument("--path", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.phase:
    print(json.dumps(read_only(a) if a.phase == "read" else phase(a)))
    return
  os.makedirs(a.dir, exist_ok=True)
  path = os.path.join(a.dir, "train.npy")
  result = {"bench": "feature_store", "rows": a.rows, "grid": "7x7x1280 float16",
            "file_gb": a.rows * int(np.prod(GRID)) * 2 / 2**30}
  try:
    result["write_s"] = write_store(path, a.rows)
    result["write_gb_per_s"] = result["file_gb"] / result["write_s"]
    for name in ("stream", "memory", "read"):
      if name != "memory":
        drop_from_page_cache(path)
      cmd = [sys.executable, "-m", "bench.feature_store", "--phase", name, "--path", path, "--steps", str(a.steps),
             "--batch_size", str(a.batch_size), "--memory_gb", str(a.memory_gb)]
      out = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if out.returncode:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"{name} phase failed ({out.returncode})")
      result[name] = json.loads(out.stdout.strip().splitlines()[-1])
    result["stream_vs_memory_captions_per_s"] = (result["stream"]["captions_per_s"] /
                                                 result["memory"]["captions_per_s"])
  finally:
    if not a.keep and os.path.exists(path):
      os.remove(path)
  result["machine"] = machine()
  emit(result)


if __name__ == "__main__":
  main()
