"""Host-made batches and how the loop runs them: `chunks` cuts the run's steps into dispatches (one jitted call
each); `HostBatches` makes every chunk's inputs from a source's host batches (`batches(start, stop)`), stacked
and copied to the devices in a background thread (`prefetch`), ahead of the step; `Feed` is what every feed
gives the loop from its source of train batches."""
from __future__ import annotations

import queue
import threading
from typing import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def prefetch(items: Iterator, size: int = 2) -> Iterator:
  """Runs `items` in a background thread, `size` ahead (host batching + device_put overlap the step)."""
  q: queue.Queue = queue.Queue(size)
  done = object()

  def run():
    try:
      for item in items:
        q.put(item)
    except BaseException as e:  # handed to the consumer, raised there
      q.put(e)
    q.put(done)

  threading.Thread(target=run, daemon=True).start()
  while (item := q.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item


def chunks(start: int, stop: int, k: int, objective) -> list[tuple[int, int]]:
  """(first step, steps) of each dispatch of steps start..stop-1: at most k steps, ending on multiples of k (the
  log, eval and save intervals are multiples of k, so they fall on dispatch ends, and a resumed run dispatches
  as the straight one did), and cut where `objective(step)` changes (one objective per jitted call)."""
  out, step = [], start
  while step < stop:
    end = min((step // k + 1) * k, stop)
    end = next((s for s in range(step + 1, end) if objective(s) is not objective(step)), end)
    out.append((step, end - step))
    step = end
  return out


def stack(batches: list[dict]) -> dict:
  """Batches stacked [n, B, ...], each cut to the longest caption of the n (zero padding: a masked <pad>)."""
  if len(batches) == 1:
    return {k: v[None] for k, v in batches[0].items()}  # a view: no copy
  out = {}
  for k in batches[0]:
    vs = [b[k] for b in batches]
    if vs[0].ndim > 1 and len({v.shape[1] for v in vs}) > 1:
      width = max(v.shape[1] for v in vs)
      vs = [np.pad(v, [(0, 0), (0, width - v.shape[1])] + [(0, 0)] * (v.ndim - 2)) for v in vs]
    out[k] = np.stack(vs)
  return out


class HostBatches:
  """A source of train batches made on the host by `batches(start, stop)` (the subclass's): a chunk's batches
  stacked and copied to the devices in a background thread, ahead of the step; `draw` slices step i's out."""
  steps_per_epoch: int

  def batches(self, start: int, stop: int) -> Iterator[dict]:
    raise NotImplementedError

  def dispatches(self, chunks: list[tuple[int, int]], mesh) -> Iterator[tuple[None, dict]]:
    sharding = NamedSharding(mesh, P(None, "data"))  # [steps, batch, ...]: the batch axis over the devices
    batches = self.batches(chunks[0][0], sum(chunks[-1])) if chunks else iter(())

    def put(n: int):
      return None, {k: jax.make_array_from_process_local_data(sharding, v)
                    for k, v in stack([next(batches) for _ in range(n)]).items()}

    return prefetch(put(n) for _, n in chunks)

  def draw(self, static, mesh):
    return lambda args, i, step: jax.tree.map(lambda x: x[i], args)


class Feed:
  """What every feed gives the loop from `self.source`, its source of train batches (a `HostBatches`, or a
  `rows.TrainRows` that may hold the train data on the devices): `steps_per_epoch`, `batches`, `dispatches` and
  `draw`. The subclass sets `source` and adds what it trains (`trainable`, `objective`) and validates on
  (`eval_inputs`)."""
  source: HostBatches
  trainable: tuple[str, ...]

  @classmethod
  def trainable_for(cls, config) -> tuple[str, ...]:
    """What a feed of this class trains under `config` (before any is built: `jaxcap.aot` asks)."""
    return cls.trainable

  @property
  def steps_per_epoch(self) -> int:
    return self.source.steps_per_epoch

  def batches(self, start: int, stop: int) -> Iterator[dict]:
    return self.source.batches(start, stop)

  def dispatches(self, chunks: list[tuple[int, int]], mesh):
    return self.source.dispatches(chunks, mesh)

  def draw(self, static, mesh):
    return self.source.draw(static, mesh)
