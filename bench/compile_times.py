"""Compile time of the train step(s) each shipped Flickr8k config compiles, on this machine.

    python -m bench.compile_times [--configs configs/flickr8k_lite0.py configs/flickr8k_resnet50.py]

For each config: the jitted train step(s) a run compiles (the cached regime: one; the finetune regime: the
frozen-encoder step, then the step that trains the encoder), at the config's batch size, model and dtype,
with random weights (no data or weight files needed). Times tracing + lowering (Python) and XLA's compile
separately. Prints one JSON object.
"""
import argparse
import importlib.util
import os
import time

from bench.common import emit, machine

VOCAB = 2535  # the real Flickr8k vocabulary at min count 5


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def compile_steps(path: str) -> dict:
  import jax
  import jax.numpy as jnp

  from jaxcap import feeds, train_state
  from jaxcap.models.caption_model import encode_fn

  cfg = load_config(path)
  cfg.model.pretrained = ""  # random weights: compile time does not depend on their values
  feed_cls = feeds.feed_class(cfg)  # the regime's feed: what it trains and the steps it compiles
  model, variables = train_state.init_model(cfg, VOCAB)
  setup = train_state.build(cfg, model, variables, 10_000, feed_cls.trainable)
  b, t = cfg.train.batch_size, cfg.data.max_len
  size = model.encoder.preprocessing.size
  images = jnp.zeros((b, size, size, 3), jnp.uint8)
  out = {"regime": cfg.train.regime, "encoder": cfg.model.encoder, "dtype": cfg.model.dtype, "batch_size": b}
  batch = {"tokens": jnp.zeros((b, t), jnp.int32), "mask": jnp.ones((b, t), jnp.float32)}
  if feed_cls.inputs == "grid":  # cached features: the encoder's grids, stored as float16
    batch["grid"] = jnp.zeros(jax.eval_shape(encode_fn(model), variables, images).shape, jnp.float16)
  else:
    batch["image"] = images
  for name, objective in feed_cls.step_objectives(cfg).items():
    step = jax.jit(train_state.make_train_step(setup, objective), donate_argnums=0)
    t0 = time.perf_counter()
    lowered = step.lower(setup.state, batch)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    out[name] = {"trace_lower_s": t1 - t0, "xla_compile_s": t2 - t1, "total_s": t2 - t0}
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--configs", nargs="+", default=["configs/flickr8k_lite0.py", "configs/flickr8k_resnet50.py"])
  a = p.parse_args()
  emit({"bench": "compile_times", **{os.path.basename(c): compile_steps(c) for c in a.configs},
        "machine": machine()})


if __name__ == "__main__":
  main()
