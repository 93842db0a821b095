"""Serving many users from one process: a batching worker in front of a `Captioner`, and a bounded LRU cache.

    service = CaptionService(Captioner.load(path))      # starts the worker; compiles every bucket first
    future = service.submit(pixels, Request(beam_size=3, max_len=20, alpha=1.0))  # Busy when the queue is full
    captions = future.result(timeout=30)                 # Captions: .greedy and .beam (inference.Result)

One worker thread makes every model call. It takes the requests that arrive within `window_s` of the first one
(and all that queued while the previous batch ran, up to the largest bucket), pads them to the next bucket size
(1, 2, 4, 8, 16 by default) and captions them together through the `Captioner`: one encoder call, one greedy
call and one beam-search call per distinct (beam, max_len, alpha), all through `evaluator.decode_grids`. Every
bucket is compiled at start-up for the warm settings, so no request pays for a compile. If a batch fails, its
requests are run one by one, so an error stays with the request that caused it. The queue is bounded: beyond
`max_queue` waiting requests `submit` raises `Busy` at once instead of letting callers wait without end.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import queue
import threading
import time
from typing import Hashable, Sequence

import numpy as np

from jaxcap import fileio
from jaxcap.grids import map_grids
from jaxcap.inference import Captioner, Result


class Busy(RuntimeError):
  """The request queue is full: try again in a moment."""


@dataclasses.dataclass(frozen=True)
class Request:
  """Decoding settings of one request: beam_size 1 is greedy only."""
  beam_size: int = 3
  max_len: int = 20
  alpha: float = 1.0


@dataclasses.dataclass
class Captions:
  greedy: Result
  beam: Result               # the greedy result itself when beam_size is 1
  batch: int                 # how many requests were captioned in the same model calls
  model_s: float             # seconds of that batch's model calls (encoder + decoders)


@dataclasses.dataclass
class _Job:
  pixels: np.ndarray         # [S, S, 3] uint8, the encoder's input
  request: Request
  future: concurrent.futures.Future


_STOP = object()


class CaptionService:
  """A thread that batches caption requests from many callers (threads: Streamlit sessions) into few calls."""

  def __init__(self, captioner: Captioner, buckets: Sequence[int] = (1, 2, 4, 8, 16), max_queue: int = 64,
               window_s: float = 0.005, warm: Sequence[Request] = (Request(),), stats_path: str | None = None):
    self.captioner = captioner
    self.buckets = tuple(sorted(set(buckets)))
    self.window_s, self.stats_path = window_s, stats_path
    self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
    self._lock = threading.Lock()
    self.stats = {"requests": 0, "batches": 0, "model_calls": 0, "rejected": 0, "failed": 0,
                  "batch_sizes": collections.Counter(), "warm_up_s": 0.0, "warm_up_model_calls": 0}
    t0 = time.perf_counter()
    self._warm_up(warm)
    self.stats["warm_up_s"] = round(time.perf_counter() - t0, 2)
    self.stats["warm_up_model_calls"] = self.stats["model_calls"]
    self._closed = False
    self._thread = threading.Thread(target=self._loop, name="jaxcap-caption-worker", daemon=True)
    self._thread.start()

  # -- callers ------------------------------------------------------------------------------------------
  def submit(self, pixels: np.ndarray, request: Request = Request()) -> concurrent.futures.Future:
    """Queues one image's preprocessed pixels [S, S, 3] uint8; the future's result is a `Captions`.
    Raises `Busy` when `max_queue` requests are already waiting, ValueError for pixels of the wrong shape."""
    size = self.captioner.preprocessing.size
    if pixels.shape != (size, size, 3) or pixels.dtype != np.uint8:
      raise ValueError(f"expected uint8 pixels [{size}, {size}, 3], got {pixels.dtype} {pixels.shape}")
    if self._closed:
      raise RuntimeError("the caption service is closed")
    job = _Job(pixels, request, concurrent.futures.Future())
    try:
      self._queue.put_nowait(job)
    except queue.Full:
      with self._lock:
        self.stats["rejected"] += 1
      raise Busy(f"the server is busy ({self._queue.maxsize} images waiting); retry in a moment") from None
    return job.future

  def caption(self, pixels: np.ndarray, request: Request = Request(), timeout: float | None = None) -> Captions:
    return self.submit(pixels, request).result(timeout)

  def queued(self) -> int:
    return self._queue.qsize()

  def close(self, timeout: float = 30.0) -> None:
    """Stops the worker after the requests already queued."""
    if not self._closed:
      self._closed = True
      self._queue.put(_STOP)
      self._thread.join(timeout)

  # -- the worker ---------------------------------------------------------------------------------------
  def bucket(self, n: int) -> int:
    """The smallest bucket that holds n rows."""
    return next(b for b in self.buckets if b >= n)

  def _warm_up(self, warm: Sequence[Request]) -> None:
    """Compiles the encoder and each warm setting's decoders for every bucket, and runs TF's resize once."""
    size = self.captioner.preprocessing.size
    self.captioner.preprocess(np.zeros((size + 1, size + 1, 3), np.uint8))  # TF's first call is slow
    blank = np.zeros((size, size, 3), np.uint8)
    for b in self.buckets:
      for r in warm:
        self._caption([_Job(blank, r, concurrent.futures.Future())] * b)

  def _loop(self) -> None:
    while True:
      first = self._queue.get()
      if first is _STOP:
        return
      jobs, stop = [first], False
      deadline = time.monotonic() + self.window_s
      while len(jobs) < self.buckets[-1]:
        try:
          job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
          break
        if job is _STOP:
          stop = True
          break
        jobs.append(job)
      jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # drops requests given up on
      if jobs:
        self._run(jobs)
      if stop:
        return

  def _run(self, jobs: list[_Job]) -> None:
    try:
      results = self._caption(jobs)
    except Exception as e:  # noqa: BLE001  (an error must reach the caller, never kill the worker)
      if len(jobs) == 1:
        with self._lock:
          self.stats["failed"] += 1
        jobs[0].future.set_exception(e)
      else:
        for job in jobs:     # one by one: the error stays with the request that caused it
          self._run([job])
      return
    for job, result in zip(jobs, results):
      job.future.set_result(result)
    with self._lock:
      self.stats["requests"] += len(jobs)
      self.stats["batches"] += 1
      self.stats["batch_sizes"][len(jobs)] += 1
    self._write_stats()

  def _caption(self, jobs: list[_Job]) -> list[Captions]:
    """One encoder call for all jobs, one greedy call per max_len, one beam call per (beam, max_len, alpha)."""
    t0 = time.perf_counter()
    cap = self.captioner
    grids = cap.encode_pixels(np.stack([j.pixels for j in jobs]), self.bucket(len(jobs)))
    calls = 1
    greedy: dict[int, Result] = {}
    beam: dict[int, Result] = {}
    groups: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, job in enumerate(jobs):
      groups[(1, job.request.max_len, 0.0)].append(i)
      if job.request.beam_size > 1:
        r = job.request
        groups[(r.beam_size, r.max_len, float(r.alpha))].append(i)
    for (k, max_len, alpha), idx in groups.items():
      results = cap.decode(map_grids(lambda g: g[idx], grids), k, max_len, alpha,  # noqa: B023
                           self.bucket(len(idx)))
      calls += 1
      (greedy if k == 1 else beam).update(zip(idx, results))
    model_s = time.perf_counter() - t0
    with self._lock:
      self.stats["model_calls"] += calls
    return [Captions(greedy[i], beam.get(i, greedy[i]), len(jobs), model_s) for i in range(len(jobs))]

  def snapshot(self) -> dict:
    with self._lock:
      return {**self.stats, "batch_sizes": {str(k): v for k, v in sorted(self.stats["batch_sizes"].items())},
              "queued": self._queue.qsize()}

  def _write_stats(self) -> None:
    if self.stats_path:
      try:
        fileio.write_atomic(self.stats_path, json.dumps(self.snapshot()))
      except OSError:
        pass  # statistics are for benchmarks; serving goes on


class LRU:
  """A thread-safe dict that keeps the `max_entries` most recently used entries."""

  def __init__(self, max_entries: int):
    self.max_entries = max_entries
    self._data: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()
    self.hits = self.misses = 0

  def get(self, key: Hashable):
    with self._lock:
      if key in self._data:
        self._data.move_to_end(key)
        self.hits += 1
        return self._data[key]
      self.misses += 1
      return None

  def put(self, key: Hashable, value) -> None:
    with self._lock:
      self._data[key] = value
      self._data.move_to_end(key)
      while len(self._data) > self.max_entries:
        self._data.popitem(last=False)

  def __len__(self) -> int:
    return len(self._data)
