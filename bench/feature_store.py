"""A COCO-sized feature store: 113,287 random 7x7x1280 float16 grids on disk (14 GB), the decoder trained on them
for 200 steps at batch 64 streaming the grids from disk, next to the in-memory feed in the same run.

    python -m bench.feature_store [--dir /tmp/jaxcap_store_bench] [--steps 200] [--memory_gb 2] [--block 10]
                                  [--keep] [--reuse]

1. Writes <dir>/train.npy through `feature_cache.RowWriter` (the cache's own writer), timed.
2. Drops the file from the OS page cache (fsync + posix_fadvise DONTNEED: this file only), so the streamed
   phase starts cold and really reads the disk.
3. Child processes training the shipped Flickr8k decoder (attend, deep output, 512; vocabulary 3,000) with the
   trainer's own pieces (`feeds.rows.grid_batches`, `feeds.host.prefetch`, the jitted train step, at most two steps in
   flight as `train_lib.InFlight` keeps them, glibc's mmap threshold fixed as `train_lib.steady_host_memory`
   sets it), on one batch schedule (5 captions per image, lengths 8-22, length-bucketed), every batch shape
   compiled before the timed steps (an XLA compilation cache shared by the children):
   - "stream": the streamed feed alone, `feature_cache.FeatureRows` over the whole file (only each batch's rows
     are read): captions/s and its peak RSS (VmHWM: everything the process held at its peak, JAX, XLA and
     TensorFlow included; the page cache is the kernel's and is not in it), bytes read from storage
     (/proc/self/io read_bytes) and CPU seconds;
   - "interleaved": the streamed feed and the in-memory feed in one process, alternating turns of --block
     steps (each feed through its own prefetch thread), 200 steps each: this machine is shared and its load
     drifts by minutes, so the two are compared under the same load. The in-memory feed holds the rows that fit
     --memory_gb (2 GB: the full 14 GB in RAM would starve this 23 GB machine) and indexes them modulo that
     count: the gather a batch does costs the same whatever the array's length.
4. "read": the same batches' rows read cold again (page cache dropped) with no training: how fast the store
   alone delivers, i.e. the headroom over the step (what an accelerator's faster step would need).
Prints one JSON object; deletes the store unless --keep.
"""
import argparse
import json
import os
import shutil
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


def feature_cache_rows(path: str) -> int:
  from jaxcap import feature_cache
  return len(feature_cache.FeatureRows(path))


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
  """"stream": the streamed feed alone (its own process, so the peak RSS is the feed's). "interleaved": both
  feeds in one process, alternating blocks of --block steps, each feed through its own prefetch thread, so
  both see the same machine load (this machine is shared); captions/s of each over its 200 steps."""
  import jax

  from bench.decoder import make_jax_train_step
  from jaxcap import feature_cache, memory, train_lib
  from jaxcap.feeds import host, rows as feed_rows
  from jaxcap.data import batching

  t_setup = time.perf_counter()
  train_lib.steady_host_memory()  # as the trainer does
  step_fn, state, _ = make_jax_train_step(a.batch_size, 22, deep_output=True)
  step = jax.jit(step_fn, donate_argnums=0)
  rows = feature_cache.FeatureRows(a.path)
  n = len(rows)
  rng = np.random.default_rng(1)
  lengths = rng.integers(10, 25, n * CAPS).astype(np.int32)  # <start> + 8..22 words + <end>
  tokens = rng.integers(4, 3000, (n * CAPS, 24), dtype=np.int32)
  tokens[np.arange(24)[None, :] >= lengths[:, None]] = 0
  image_index = np.repeat(np.arange(n, dtype=np.int32), CAPS)
  schedule = batching.Schedule(lengths, a.batch_size, seed=0)
  feeds_ = {"stream": (rows, batching.CaptionPairs(image_index, tokens, lengths))}
  held = {"stream": f"all {n} grids streamed from disk ({memory.gb(rows.nbytes)} file)"}
  if a.phase == "interleaved":
    keep = min(n, int(a.memory_gb * 2**30) // rows[:1].nbytes)
    feeds_["memory"] = (rows[:keep].load(), batching.CaptionPairs(image_index % keep, tokens, lengths))
    held["memory"] = f"{keep} of {n} grids in host memory ({memory.gb(keep * rows[:1].nbytes)})"
    drop_from_page_cache(a.path)  # the streamed rows start cold here too
  put = lambda b: jax.device_put(b)  # noqa: E731

  # Compile every batch shape of the timed steps first (one step each, from a batch of that shape).
  first_of = {}
  for s in range(a.steps):
    first_of.setdefault(schedule.padded_length(schedule.batch(s), 24), s)
  t_compile = time.perf_counter()
  for s in first_of.values():
    grids, pairs = feeds_["stream"]
    state, m = step(state, put(next(feed_rows.grid_batches(grids, pairs, schedule, 24, s, s + 1))))
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t_compile
  before, cpu0, load0 = proc_status(), os.times(), os.getloadavg()[0]

  its = {k: host.prefetch(map(put, feed_rows.grid_batches(g, p, schedule, 24, 0, a.steps)))
         for k, (g, p) in feeds_.items()}
  spent = {k: 0.0 for k in its}
  block = a.block if a.phase == "interleaved" else a.steps
  for first in range(0, a.steps, block):
    for k, it in its.items():
      t0, in_flight = time.perf_counter(), train_lib.InFlight()  # as the trainer's loop
      for _ in range(min(block, a.steps - first)):
        state, m = step(state, next(it))
        in_flight.add(m["loss"])
      jax.block_until_ready(m)
      spent[k] += time.perf_counter() - t0
  after, cpu1 = proc_status(), os.times()
  out = {"phase": a.phase, "steps": a.steps, "batch": a.batch_size, "block": block,
         "feeds": {k: {"held": held[k], "captions_per_s": a.steps * a.batch_size / spent[k], "timed_s": spent[k]}
                   for k in its},
         "setup_s": t_compile - t_setup, "compile_warmup_s": compile_s, "shapes": len(first_of),
         "peak_rss_gb": after["VmHWM"] / 2**30, "end_rss_gb": after["VmRSS"] / 2**30,
         "end_rss_anon_gb": after["RssAnon"] / 2**30, "end_rss_file_gb": after["RssFile"] / 2**30,
         "read_from_storage_during_steps_gb": (after["read_bytes"] - before["read_bytes"]) / 2**30,
         "cpu_user_s": cpu1.user - cpu0.user, "cpu_sys_s": cpu1.system - cpu0.system,
         "loadavg_1min_before": load0, "loadavg_1min_after": os.getloadavg()[0], "final_loss": float(m["loss"])}
  if a.phase == "interleaved":
    out["stream_vs_memory_captions_per_s"] = spent["memory"] / spent["stream"]
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dir", default="/tmp/jaxcap_store_bench")
  p.add_argument("--rows", type=int, default=N)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--memory_gb", type=float, default=2.0, help="host memory the in-memory feed's grids may take")
  p.add_argument("--keep", action="store_true", help="keep the store on disk")
  p.add_argument("--reuse", action="store_true", help="use the store a --keep run left (skip writing it)")
  p.add_argument("--block", type=int, default=10, help="steps per turn of each feed in the interleaved run")
  p.add_argument("--phase", choices=("stream", "interleaved", "read"), help=argparse.SUPPRESS)
  p.add_argument("--path", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.phase:
    print(json.dumps(read_only(a) if a.phase == "read" else phase(a)))
    return
  os.makedirs(a.dir, exist_ok=True)
  path = os.path.join(a.dir, "train.npy")
  result = {"bench": "feature_store", "rows": a.rows, "grid": "7x7x1280 float16",
            "file_gb": a.rows * int(np.prod(GRID)) * 2 / 2**30}
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(a.dir, "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # phases after the first skip XLA compiles

  def child(name: str) -> dict:
    cmd = [sys.executable, "-m", "bench.feature_store", "--phase", name, "--path", path, "--steps", str(a.steps),
           "--batch_size", str(a.batch_size), "--memory_gb", str(a.memory_gb), "--block", str(a.block)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode:
      sys.stderr.write(out.stderr[-3000:])
      raise SystemExit(f"{name} phase failed ({out.returncode})")
    print(f"{name}: {out.stdout.strip().splitlines()[-1]}", file=sys.stderr, flush=True)  # kept if cut short
    return json.loads(out.stdout.strip().splitlines()[-1])

  try:
    if a.reuse and os.path.exists(path) and feature_cache_rows(path) == a.rows:
      result["write_s"] = None  # written by an earlier --keep run
    else:
      result["write_s"] = write_store(path, a.rows)
      result["write_gb_per_s"] = result["file_gb"] / result["write_s"]
    for name in ("stream", "interleaved", "read"):
      drop_from_page_cache(path)  # the streamed rows start cold in every phase
      result[name] = child(name)
    inter = result["interleaved"]["feeds"]
    result["summary"] = {
        "stream_alone_peak_rss_gb": result["stream"]["peak_rss_gb"],
        "stream_alone_captions_per_s": result["stream"]["feeds"]["stream"]["captions_per_s"],
        "interleaved_stream_captions_per_s": inter["stream"]["captions_per_s"],
        "interleaved_memory_captions_per_s": inter["memory"]["captions_per_s"],
        "stream_vs_memory": result["interleaved"]["stream_vs_memory_captions_per_s"]}
  finally:
    if not a.keep and os.path.exists(path):
      os.remove(path)
    shutil.rmtree(os.path.join(a.dir, "xla_cache"), ignore_errors=True)
  result["machine"] = machine()
  emit(result)


if __name__ == "__main__":
  main()
