"""The cached regime's train loop with each feed: host feed (gather in numpy + copy, one step per call),
device-resident feed (one step per call) and device-resident feed with K steps per call, on random data of the
real shapes (7x7x1280 float16 grids, 5 captions an image, lengths 8-24 tokens, length-bucketed), the
shipped decoder (attend, 512 wide, vocabulary 3,000), one process.

    python -m bench.feeds [--images 2000] [--steps 200] [--repeats 3] [--k 8] [--batch_size 64] [--small]

The trainer's own pieces: `feeds.host.chunks`, `feeds.host.HostBatches` (prefetch thread), `device_feed.DeviceCaptions`,
`train_state.make_dispatch`. Each variant runs its steps once untimed (every shape compiled), then --repeats
timed runs of the same steps from the same state. Per variant: median seconds of the run (min, max),
captions/s, and CPU seconds per step spent making the steps' inputs (in the thread that makes them: the
prefetch thread for the host feed, the loop's thread for the device feed) and in the loop's thread overall.
--small: a 64-wide decoder on 7x7x64 grids (a smoke run). Prints one JSON object.
"""
import argparse
import statistics
import time

import numpy as np

from bench.common import emit, machine


class Timed:
  """Wraps an iterator; CPU seconds of the thread that runs each next() (time.thread_time), summed."""

  def __init__(self, items):
    self.items, self.cpu_s = iter(items), 0.0

  def __iter__(self):
    return self

  def __next__(self):
    t = time.thread_time()
    try:
      return next(self.items)
    finally:
      self.cpu_s += time.thread_time() - t


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--images", type=int, default=2000)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--k", type=int, default=8)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--small", action="store_true")
  a = p.parse_args()

  import jax
  from jax.sharding import Mesh

  from configs import default
  from jaxcap import device_feed, objectives, train_state
  from jaxcap.feeds import host, rows as feed_rows
  from jaxcap.data import batching

  channels, width, vocab = (64, 64, 300) if a.small else (1280, 512, 3000)
  cfg = default.get_config()
  cfg.model.encoder, cfg.model.pretrained, cfg.model.image_size = "small_cnn", "", 32
  cfg.model.embed_dim = cfg.model.hidden_dim = cfg.model.attention_dim = width
  cfg.model.deep_output = True
  cfg.data.max_len = 24
  model, variables = train_state.init_model(cfg, vocab)
  variables["params"]["decoder"] = model.decoder.init(jax.random.PRNGKey(1), np.zeros((1, 7, 7, channels)),
                                                      np.zeros((1, 2), np.int32))["params"]
  setup = train_state.build(cfg, model, variables, 10_000, trainable=("decoder",))
  objective = objectives.cross_entropy(cfg, objectives.decoder_forward)
  host_state = jax.tree.map(np.array, setup.state)  # fresh device copies per run (the step donates its state)

  rng = np.random.default_rng(0)
  grids = rng.uniform(-1, 1, (a.images, 7, 7, channels)).astype(np.float16)
  m = a.images * 5
  lengths = rng.integers(8, 25, m).astype(np.int32)  # <start> + words + <end>
  tokens = rng.integers(4, vocab, (m, 24)).astype(np.int32)
  tokens[np.arange(24)[None, :] >= lengths[:, None]] = 0
  pairs = batching.CaptionPairs(np.repeat(np.arange(a.images, dtype=np.int32), 5), tokens, lengths)
  schedule = batching.Schedule(lengths, a.batch_size, 0)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))

  class HostFeed(host.HostBatches):
    def batches(self, start, stop):
      return feed_rows.grid_batches(grids, pairs, schedule, 24, start, stop)

  def variant(name: str, feed, k: int) -> dict:
    plan = host.chunks(0, a.steps, k, lambda s: objective)
    compiled = {}

    def loop(state):
      made = Timed(feed.dispatches(plan, mesh))
      main0 = time.thread_time()
      t0 = time.perf_counter()
      for first, n in plan:
        static, args = next(made)
        key = (n, static)
        if key not in compiled:
          compiled[key] = jax.jit(train_state.make_dispatch(setup, objective, feed.draw(static, mesh), n),
                                  donate_argnums=0)
        state, metrics = compiled[key](state, args)
      jax.block_until_ready(metrics)
      return state, time.perf_counter() - t0, made.cpu_s, time.thread_time() - main0, float(metrics["loss"])

    # The host feed makes its inputs in the prefetch thread: time them there.
    if isinstance(feed, HostFeed):
      orig = host.prefetch
      cpu = {"s": 0.0}

      def prefetch_timed(items, size=2):
        def timed():
          it = iter(items)
          while True:
            t = time.thread_time()
            try:
              item = next(it)
            except StopIteration:
              return
            finally:
              cpu["s"] += time.thread_time() - t
            yield item
        return orig(timed(), size)

      host.prefetch = prefetch_timed
    state = jax.device_put(host_state)
    state, *_ = loop(state)  # compiles every shape
    runs = []
    for _ in range(a.repeats):
      if isinstance(feed, HostFeed):
        cpu["s"] = 0.0
      start_state = jax.device_put(host_state)
      _, secs, made_cpu, main_cpu, loss = loop(start_state)
      runs.append((secs, cpu["s"] if isinstance(feed, HostFeed) else made_cpu, main_cpu, loss))
    if isinstance(feed, HostFeed):
      host.prefetch = orig
    secs = [r[0] for r in runs]
    med = statistics.median(secs)
    return {"variant": name, "steps_per_dispatch": k, "median_s": med, "min_s": min(secs), "max_s": max(secs),
            "captions_per_s": a.steps * a.batch_size / med,
            "input_cpu_ms_per_step": 1e3 * statistics.median(r[1] for r in runs) / a.steps,
            "loop_thread_cpu_ms_per_step": 1e3 * statistics.median(r[2] for r in runs) / a.steps,
            "final_loss": runs[-1][3], "compiled_calls": len(compiled)}

  device = lambda k: device_feed.DeviceCaptions(grids, pairs, a.batch_size, 0, True, 24, shards=1,  # noqa: E731
                                                n_devices=jax.device_count(), steps_per_dispatch=k)
  rows = [variant("host feed, 1 step/call", HostFeed(), 1),
          variant("device feed, 1 step/call", device(1), 1),
          variant(f"device feed, {a.k} steps/call", device(a.k), a.k)]
  emit({"bench": "feeds", "machine": machine(), "images": a.images,
        "captions": m, "batch": a.batch_size, "steps": a.steps, "repeats": a.repeats, "small": a.small,
        "grid": [7, 7, channels], "decoder_width": width, "vocab": vocab, "rows": rows})


if __name__ == "__main__":
  main()
