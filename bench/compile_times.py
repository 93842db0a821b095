"""Compile time of the train step for each shipped Flickr8k config, on this machine.

    python bench/compile_times.py [--configs configs/flickr8k_lite0.py configs/flickr8k_resnet50.py]

For each config: the jitted train step(s) a run compiles (the cached regime: one; the finetune regime: the
frozen-encoder step, then the step that trains the encoder), at the config's batch size, model and dtype,
with random weights (no data or weight files needed). Times tracing + lowering (Python) and XLA's compile
separately. Prints one JSON object.
"""
import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, machine  # noqa: E402

VOCAB = 2535  # the real Flickr8k vocabulary at min count 5


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def compile_steps(path: str) -> dict:
  import jax
  import jax.numpy as jnp

  from jaxcap import train_lib
  from jaxcap.models.captioner import make_captioner

  cfg = load_config(path)
  cfg.model.pretrained = ""  # random weights: compile time does not depend on their values
  cap = make_captioner(cfg.model, VOCAB)
  variables = train_lib.init_variables(cap, cfg, jax.random.PRNGKey(0))
  tx = train_lib.make_optimizer(cfg, 10_000)
  state = train_lib.create_state(variables, tx, 0)
  b, t = cfg.train.batch_size, cfg.data.max_len
  batch = {"tokens": jnp.zeros((b, t), jnp.int32), "mask": jnp.ones((b, t), jnp.float32)}
  size = cap.encoder.preprocessing.size
  if cfg.train.regime == "cached":
    grid = jax.eval_shape(lambda v, x: cap.apply(v, x, method=type(cap).encode), variables,
                          jnp.zeros((1, size, size, 3), jnp.uint8))
    batch["grid"] = jnp.zeros((b,) + grid.shape[1:], jnp.float16)
    modes = [False]
  else:
    batch["image"] = jnp.zeros((b, size, size, 3), jnp.uint8)
    modes = [False, True]
  out = {"regime": cfg.train.regime, "encoder": cfg.model.encoder, "dtype": cfg.model.dtype, "batch_size": b}
  for train_encoder in modes:
    step = jax.jit(train_lib.make_train_step(cap, cfg, tx, train_encoder), donate_argnums=0)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    name = "step_train_encoder" if train_encoder else ("step" if cfg.train.regime == "cached" else "step_frozen_encoder")
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
