"""The fine-tune regime's two image feeds on the same data, the trainer's own classes: tf.data
(`feeds.images.ImageStream`: every image decoded and resized every epoch) and the images decoded once
(`feeds.images.DecodedImages`, uint8 in host memory or on the device, augmentation on the device).

    python -m bench.image_feed --data_dir /path/to/flickr8k [--size 224] [--batch_size 32] [--steps 40]
        [--repeats 3] [--augment] [--feeds stream,host,device]

A small_cnn encoder (random init) and a small attention decoder, so the step is light and the input's cost
shows. Each variant: the feed made (the decoded one decodes the train split once into its on-disk cache on the
first run: `build_s`), then --repeats runs of --steps train steps (after --warmup untimed steps from the same
start, so tf.data's buffers are full and every shape is compiled), each run from the same state. Per variant:
median seconds (min, max) and images/s of the train loop, and the process CPU time per step (every thread:
tf.data's, XLA's, the loop's); then the same steps' inputs alone, made and not trained on: the feed's own wall
and CPU time per step (the device-resident feed makes its batches inside the step: nothing here). Prints one
JSON object.
"""
import argparse
import statistics
import time

from bench.common import emit, machine


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data_dir", default="", help="a Flickr8k folder (default: the quickstart's synthetic data)")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--augment", action="store_true")
  p.add_argument("--feeds", default="stream,host,device", help="of stream (tf.data), host, device (decoded)")
  a = p.parse_args()

  import jax
  import numpy as np
  from jax.sharding import Mesh

  from configs import default
  from jaxcap import feeds, train_lib, train_state
  from jaxcap.feeds import host

  cfg = default.get_config()
  if a.data_dir:
    cfg.data.data_dir = a.data_dir
  else:
    cfg.data.synthetic = True
  cfg.model.encoder, cfg.model.pretrained, cfg.model.image_size = "small_cnn", "", a.size
  cfg.model.embed_dim, cfg.model.hidden_dim, cfg.model.attention_dim = 64, 128, 64
  cfg.train.regime, cfg.train.batch_size, cfg.train.augment = "finetune", a.batch_size, a.augment
  builder, vocab, train, dev = train_lib.load_data(cfg, "/nonexistent-workdir", False)
  model, variables = train_state.init_model(cfg, len(vocab))
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  total = a.warmup + a.steps
  log = []

  def variant(name: str) -> dict:
    c = cfg.copy_and_resolve_references()
    c.train.image_feed = "stream" if name == "stream" else "decoded"
    c.train.feed_placement = "host" if name == "host" else "device"
    t0 = time.perf_counter()
    feed = feeds.make_feed(c, builder, model, variables, vocab, train, dev, log.append, True)
    build_s = time.perf_counter() - t0
    setup = train_state.build(c, model, variables, 10_000, feed.trainable)
    host_state = jax.tree.map(np.array, setup.state)
    plan = host.chunks(0, total, 1, feed.objective)
    compiled = {}

    def loop(train_too: bool):
      """(wall s, process CPU s) of the steps after the warmup ones."""
      state = jax.device_put(host_state)
      inputs = iter(feed.dispatches(plan, mesh))
      for first, n in plan:
        if first == a.warmup:
          jax.block_until_ready(state)
          t, cpu = time.perf_counter(), time.process_time()
        static, args = next(inputs)
        if train_too:
          key = (feed.objective(first), static)
          if key not in compiled:
            compiled[key] = jax.jit(train_state.make_dispatch(setup, key[0], feed.draw(static, mesh), n),
                                    donate_argnums=0)
          state, metrics = compiled[key](state, args)
      jax.block_until_ready(state)
      return time.perf_counter() - t, time.process_time() - cpu

    loop(True)  # compiles every shape
    runs = [loop(True) for _ in range(a.repeats)]
    alone = [loop(False) for _ in range(a.repeats)]
    wall = [r[0] for r in runs]
    med = statistics.median(wall)
    return {"feed": name, "class": type(feed).__name__, "build_s": round(build_s, 2),
            "median_s": round(med, 3), "min_s": round(min(wall), 3), "max_s": round(max(wall), 3),
            "images_per_s": round(a.steps * a.batch_size / med, 1),
            "cpu_ms_per_step": round(1e3 * statistics.median(r[1] for r in runs) / a.steps, 1),
            "inputs_alone_wall_ms_per_step": round(1e3 * statistics.median(r[0] for r in alone) / a.steps, 2),
            "inputs_alone_cpu_ms_per_step": round(1e3 * statistics.median(r[1] for r in alone) / a.steps, 2),
            "compiled_calls": len(compiled)}

  rows = [variant(name) for name in a.feeds.split(",")]
  emit({"bench": "image_feed", "machine": machine(), "devices": [str(d) for d in jax.devices()],
        "data": a.data_dir or "synthetic", "train_images": len(train[0]), "size": a.size,
        "batch": a.batch_size, "steps": a.steps, "warmup": a.warmup, "repeats": a.repeats, "augment": a.augment,
        "rows": rows, "log": [line for line in log if line.startswith(("image feed", "train feed", "decoded",
                                                                        "feature store"))]})


if __name__ == "__main__":
  main()
