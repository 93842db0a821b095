"""End-to-end train step with the encoder fine-tuned (images/s), next to the input pipeline feeding it.

    python -m bench.finetune_step --data_dir /path/to/flickr8k [--encoder efficientnet_lite0 --batch_size 32]

Runs the finetune-regime train step (encoder + attention decoder, forward, backward, AdamW) on real batches
from the tf.data pipeline (with augmentation), and the pipeline alone, in the same run: the pipeline must
deliver well over what the step consumes. Also the step's compile time. Prints one JSON object.
"""
import argparse
import os

from bench.common import emit, machine, time_train_step, timeit


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data_dir", default=os.environ.get("JAXCAP_FLICKR8K_DIR"),
                 help="the Flickr8k folder (default: $JAXCAP_FLICKR8K_DIR)")
  p.add_argument("--encoder", default="efficientnet_lite0")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args()
  if not a.data_dir:
    p.error("--data_dir (or $JAXCAP_FLICKR8K_DIR): the Flickr8k folder")
  import jax

  from configs import default
  from jaxcap import objectives, train_state
  from jaxcap.data import pipeline, tfds_builder
  from jaxcap.data import vocab as V

  builder = tfds_builder.prepare(a.data_dir)
  names, caps = tfds_builder.split_captions(builder, "train")
  vocab = V.Vocab.build(c for n in names for c in caps[n])
  cfg = default.get_config()
  cfg.model.encoder, cfg.model.pretrained = a.encoder, ""
  cfg.train.finetune_from_step = 0  # the encoder's learning rate is on from the first step
  model, variables = train_state.init_model(cfg, len(vocab))
  setup = train_state.build(cfg, model, variables, 10_000, trainable=("encoder", "decoder"))
  state = jax.device_put(setup.state)
  it = pipeline.train_batches(builder, vocab, batch_size=a.batch_size, max_len=cfg.data.max_len,
                              preprocessing=model.encoder.preprocessing, augment=True)
  objective = objectives.cross_entropy(cfg, objectives.image_forward(True))
  step = jax.jit(train_state.make_train_step(setup, objective), donate_argnums=0)
  batch = jax.device_put(next(it))
  r_step, compile_s, _ = time_train_step(step, state, batch, a.repeats)
  n_batches = 20
  r_pipe = timeit(lambda: [next(it) for _ in range(n_batches)], repeats=a.repeats)
  step_ips = a.batch_size / r_step["median_s"]
  pipe_ips = n_batches * a.batch_size / r_pipe["median_s"]
  emit({"bench": "finetune_step", "encoder": a.encoder, "batch_size": a.batch_size, "compile_s": compile_s,
        "train_step_images_per_s": step_ips, "train_step": r_step,
        "pipeline_images_per_s_augment": pipe_ips, "pipeline": r_pipe,
        "pipeline_over_step": pipe_ips / step_ips, "machine": machine()})


if __name__ == "__main__":
  main()
