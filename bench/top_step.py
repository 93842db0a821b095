"""The top regime's train step against the end-to-end fine-tune step: same encoder, same captions, one run.

    python -m bench.top_step --data_dir /path/to/flickr8k [--encoder efficientnet_lite0 --top_stages 2]

Both steps train the encoder (the whole of it, or its last --top_stages stages on the cached trunk) and the
attention decoder on one real batch of --images_per_step train images x --captions_per_image captions
(decoded and resized by the tf.data pipeline). The end-to-end step (the finetune regime) runs the encoder once per
caption, as its batches are captions; the top step runs the top once per image (image-major batches) from the
float16 trunk. Prints captions/s and images/s (encoder passes) of each, their ratio, and compile times.
"""
import argparse
import os

import numpy as np

from bench.common import emit, machine, time_train_step


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data_dir", default=os.environ.get("JAXCAP_FLICKR8K_DIR"),
                 help="the Flickr8k folder (default: $JAXCAP_FLICKR8K_DIR)")
  p.add_argument("--encoder", default="efficientnet_lite0")
  p.add_argument("--top_stages", type=int, default=2)
  p.add_argument("--images_per_step", type=int, default=12)
  p.add_argument("--captions_per_image", type=int, default=5)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  if not a.data_dir:
    p.error("--data_dir (or $JAXCAP_FLICKR8K_DIR): the Flickr8k folder")
  import jax
  import jax.numpy as jnp

  from configs import default
  from jaxcap import objectives, train_state
  from jaxcap.data import pipeline, tfds_builder
  from jaxcap.data import vocab as V
  from jaxcap.feeds.top import top_modules
  from jaxcap.models import encoders

  builder = tfds_builder.prepare(a.data_dir)
  names, caps = tfds_builder.split_captions(builder, "train")
  vocab = V.Vocab.build(c for n in names for c in caps[n])
  cfg = default.get_config()
  cfg.model.encoder, cfg.model.pretrained = a.encoder, ""   # random weights: the speed is the same
  model, variables = train_state.init_model(cfg, len(vocab))
  k, n_img = a.captions_per_image, a.images_per_step
  b = n_img * k
  # One real batch of images with k captions each (image-major: rows j*k .. j*k + k-1 are image j's).
  batch = next(pipeline.train_batches(builder, vocab, batch_size=b, max_len=cfg.data.max_len,
                                      preprocessing=model.encoder.preprocessing))
  images = np.repeat(np.asarray(batch["image"][:n_img]), k, axis=0)
  tokens, mask = np.asarray(batch["tokens"]), np.asarray(batch["mask"])

  start = encoders.top_start(model.encoder, a.top_stages)
  trunk = jax.jit(lambda v, x: model.encoder.apply(v, x, span=(0, start)).astype(jnp.float16))(
      {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}, images)
  results = {}
  for name, trainable, forward, inputs in (
      ("end_to_end", ("encoder", "decoder"), objectives.image_forward(True), {"image": images}),
      ("top", ("decoder", *(f"encoder/{m}" for m in top_modules(model.encoder, start))),
       objectives.top_forward(start, k), {"trunk": np.asarray(trunk)})):
    setup = train_state.build(cfg, model, variables, 10_000, trainable)
    step = jax.jit(train_state.make_train_step(setup, objectives.cross_entropy(cfg, forward)), donate_argnums=0)
    timing, compile_s, _ = time_train_step(step, jax.device_put(setup.state),
                                           jax.device_put({"tokens": tokens, "mask": mask, **inputs}), a.repeats)
    passes = b if name == "end_to_end" else n_img   # encoder passes per step
    results[name] = {"captions_per_s": b / timing["median_s"], "images_per_s": passes / timing["median_s"],
                     "compile_s": compile_s, "step": timing}
  ratio = results["top"]["captions_per_s"] / results["end_to_end"]["captions_per_s"]
  emit({"bench": "top_step", "encoder": a.encoder, "top_stages": a.top_stages, "first_top_layer": start,
        "trunk_shape": list(trunk.shape[1:]), "images_per_step": n_img, "captions_per_image": k, **results,
        "top_over_end_to_end_captions_per_s": ratio, "machine": machine()})


if __name__ == "__main__":
  main()
