"""End-to-end train step with the encoder fine-tuned (images/s), next to the input pipeline feeding it.

    python bench/finetune_step.py --data_dir ../shared/data/flickr8k [--encoder efficientnet_lite0 --batch_size 32]

Runs the finetune-regime train step (encoder + attention decoder, forward, backward, AdamW) on real batches
from the tf.data pipeline (with augmentation), and the pipeline alone, in the same run: the pipeline must
deliver well over what the step consumes. Also the step's compile time. Prints one JSON object.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, machine, time_train_step, timeit  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data_dir", default="../shared/data/flickr8k")
  p.add_argument("--encoder", default="efficientnet_lite0")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args()
  import jax

  from configs import default
  from jaxcap import train_lib
  from jaxcap.data import flickr8k, pipeline
  from jaxcap.data import vocab as V
  from jaxcap.models.captioner import make_captioner

  builder = flickr8k.prepare(a.data_dir)
  names, caps = train_lib.split_captions(builder, "train")
  vocab = V.Vocab.build(c for n in names for c in caps[n])
  cfg = default.get_config()
  cfg.model.encoder, cfg.model.pretrained = a.encoder, ""
  cfg.train.regime, cfg.train.finetune_from_step = "finetune", 0
  cap = make_captioner(cfg.model, len(vocab))
  variables = train_lib.init_variables(cap, cfg, jax.random.PRNGKey(0))
  tx = train_lib.make_optimizer(cfg, 10_000)
  state = jax.device_put(train_lib.create_state(variables, tx, 0))
  it = pipeline.train_batches(builder, vocab, batch_size=a.batch_size, max_len=cfg.data.max_len,
                              preprocessing=cap.encoder.preprocessing, augment=True)
  step = jax.jit(train_lib.make_train_step(cap, cfg, tx, train_encoder=True), donate_argnums=0)
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
