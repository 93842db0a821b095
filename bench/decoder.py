"""Decoder speed on cached features (train step, beam search, greedy), jaxcap vs the PyTorch Show-Attend-Tell.

    python -m bench.decoder [--repeats 7] [--skip_torch]

Sizes: attention/embedding/LSTM 512, vocabulary 3000, 7x7x1280 frozen features.
- train step (forward + backward + AdamW update), attend mode, length 22, batch 32 and 64: captions/s, compile
  time, FLOP/s from XLA's cost analysis and from a hand count of the math the step needs, over the measured
  2048^2 f32 matmul peak;
- beam search: ms per image at batch 1 (beam 3 and 5, after warm-up), images/s at batch 64, the 1000-image
  test split (beam 3) decoder-only time, compile times; greedy likewise.
The PyTorch baseline (bench/torch_sat.py) runs with as many threads as cores. Prints one JSON object.
"""
import argparse
import os
import time

import numpy as np

from bench.common import emit, machine, time_train_step, timeit

V, E, H, A, N, C = 3000, 512, 512, 512, 49, 1280


def needed_train_gflop(b: int, t: int, deep_output: bool = False) -> float:
  """Multiply-adds x2 of the math, forward; backward counted as 2x forward (3x in all)."""
  out = (H + C) * E + E * V if deep_output else (H + C) * V
  per_step = (H * (A + C)            # query + gate from h
              + N * A                # score: energy . w
              + N * C                # context
              + (C + H) * 4 * H      # LSTM from [context, h]
              + E * 4 * H            # embedding gate term (hoisted, same count)
              + out)                 # output layer(s) from [h; context] (hoisted, same count)
  per_image = N * C * A + 2 * C * H  # attention projection of the grid once, init_h / init_c
  return 3 * 2 * b * (t * per_step + per_image) / 1e9


def make_jax_train_step(b: int, t: int, deep_output: bool, attention_backward: str = "manual"):
  """(train_step, state, batch): the shipped trainer's step for the 7x7x1280 decoder, batch b, length t."""
  import jax
  import jax.numpy as jnp

  from configs import default
  from jaxcap import objectives, train_state

  cfg = default.get_config()
  cfg.model.encoder, cfg.model.pretrained, cfg.model.image_size = "small_cnn", "", 32
  cfg.model.deep_output = deep_output
  cfg.model.attention_backward = attention_backward
  model, variables = train_state.init_model(cfg, V)
  # The decoder as it is for 7x7x1280 Lite0 features (the small encoder only fills the state's slot).
  variables["params"]["decoder"] = model.decoder.init(jax.random.PRNGKey(1), jnp.zeros((1, 7, 7, C)),
                                                      jnp.zeros((1, 2), jnp.int32))["params"]
  setup = train_state.build(cfg, model, variables, 10_000, trainable=("decoder",))
  state = jax.device_put(setup.state)
  rng = np.random.default_rng(0)
  batch = {"grid": jnp.asarray(rng.normal(size=(b, 7, 7, C)), jnp.float16),
           "tokens": jnp.asarray(rng.integers(4, V, (b, t + 1)), jnp.int32),
           "mask": jnp.ones((b, t + 1), jnp.float32)}
  objective = objectives.cross_entropy(cfg, objectives.decoder_forward)
  return train_state.make_train_step(setup, objective), state, batch


def jax_train_step(b: int, t: int, repeats: int, deep_output: bool):
  import jax

  from bench.flops import compiled_flops
  step, state, batch = make_jax_train_step(b, t, deep_output)
  r, compile_s, state = time_train_step(jax.jit(step, donate_argnums=0), state, batch, repeats)
  xla_flops = compiled_flops(step, state, batch)
  return r, compile_s, xla_flops


def torch_train_step(b: int, t: int, repeats: int):
  import torch

  from bench.torch_sat import DecoderWithAttention, train_step
  torch.manual_seed(0)
  model = DecoderWithAttention(V).train()
  opt = torch.optim.Adam(model.parameters(), lr=4e-4)
  enc = torch.randn(b, N, C)
  caps = torch.randint(4, V, (b, t + 1))
  lengths = torch.full((b,), t + 1)
  return timeit(lambda: train_step(model, opt, enc, caps, lengths), repeats=repeats)


def jax_decode(repeats: int, deep_output: bool, dtype: str = "float32"):
  import jax
  import jax.numpy as jnp

  from bench.flops import memory_bandwidth
  from jaxcap import decode
  from jaxcap.models.decoder import Decoder
  dec = Decoder(vocab_size=V, mode="attend", embed_dim=E, hidden_dim=H, attention_dim=A, dropout=0.0,
                deep_output=deep_output, dtype=jnp.dtype(dtype))
  rng = np.random.default_rng(0)
  params = dec.init(jax.random.key(0), jnp.zeros((1, 7, 7, C)), jnp.zeros((1, 2), jnp.int32))["params"]
  params["out"]["bias"] = params["out"]["bias"].at[2].add(-1e4)  # never <end>: every call runs all 20 steps
  params = jax.tree.map(lambda x: x.astype(dtype), params)  # weights stored in the compute dtype
  out = {}
  for name, b, k in (("greedy_b1", 1, 1), ("beam3_b1", 1, 3), ("beam5_b1", 1, 5), ("greedy_b64", 64, 1),
                     ("beam3_b64", 64, 3), ("beam5_b64", 64, 5), ("beam3_b50", 50, 3)):
    grid = jnp.asarray(rng.normal(size=(b, 7, 7, C)), jnp.float32)
    if k == 1:
      f = lambda g: decode.greedy(dec, params, g, 20)  # noqa: E731
    else:
      f = lambda g, k=k: decode.beam_search(dec, params, g, k, 20, 0.0)  # noqa: E731
    t0 = time.perf_counter()
    jax.block_until_ready(f(grid))
    compile_s = time.perf_counter() - t0
    r = timeit(lambda: jax.block_until_ready(f(grid)), repeats=repeats)
    out[name] = {"ms_per_image": 1000 * r["median_s"] / b, "images_per_s": b / r["median_s"],
                 "compile_s": compile_s, **r}
  out["test_split_1000_images_beam3_s"] = 1000 / out["beam3_b50"]["images_per_s"]
  # At batch 1 each step reads every weight the step uses once and does little arithmetic: the floor is
  # weight bytes x steps / memory bandwidth (the embedding table is gathered, the per-image layers run once).
  per_image = ("att_proj", "init_c", "init_h", "embed")
  step_bytes = sum(x.nbytes for k, v in params.items() if k not in per_image for x in jax.tree.leaves(v))
  bw = memory_bandwidth()
  out["step_weight_mbytes"] = step_bytes / 1e6
  out["memory_gbytes_per_s"] = bw / 1e9
  out["batch1_floor_ms_20_steps"] = 1000 * 20 * step_bytes / bw
  return out


def low_precision_matvec(repeats: int) -> dict:
  """The batch-1 LSTM matmul ([5, 1792] x [1792, 2048], beam 5) with f32, bf16 and int8 weights: whether
  smaller weights (less memory traffic) pay on this machine's XLA:CPU."""
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(5, C + H)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(C + H, 4 * H)), jnp.float32)
  w8, scale = jnp.asarray(rng.integers(-127, 128, w.shape), jnp.int8), jnp.ones((4 * H,), jnp.float32)
  cases = {"f32": (jax.jit(lambda x, w: x @ w), (x, w)),
           "bf16": (jax.jit(lambda x, w: jnp.dot(x.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)),
                    (x, w.astype(jnp.bfloat16))),
           "int8": (jax.jit(lambda x, w, s: (x @ w.astype(jnp.float32)) * s), (x, w8, scale))}
  out = {}
  for name, (f, args) in cases.items():
    r = timeit(lambda: [f(*args) for _ in range(50)][-1].block_until_ready(), repeats=repeats)
    out[f"{name}_ms"] = 1000 * r["median_s"] / 50
  return out


def torch_decode(repeats: int):
  import torch

  from bench.torch_sat import DecoderWithAttention, beam_search_one
  torch.manual_seed(0)
  model = DecoderWithAttention(V).eval()
  with torch.no_grad():
    model.fc.bias[2] -= 1e4  # never <end>, as for jaxcap: 20 steps every time
  enc = torch.randn(1, N, C)
  out = {}
  for k in (3, 5):
    r = timeit(lambda: beam_search_one(model, enc, k, 1, 2, max_len=19), repeats=repeats)
    out[f"beam{k}_b1"] = {"ms_per_image": 1000 * r["median_s"], "images_per_s": 1 / r["median_s"], **r}
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--length", type=int, default=22)
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--deep_output", action="store_true", help="decoder with Xu et al.'s deep output layer")
  p.add_argument("--decode_dtype", default="float32", help="decoder weights and compute for the decoding rows")
  p.add_argument("--skip_train", action="store_true", help="decoding rows only")
  a = p.parse_args()
  import torch

  from bench.flops import matmul_peak
  torch.set_num_threads(os.cpu_count())
  peak = matmul_peak()
  result = {"bench": "decoder", "deep_output": a.deep_output, "sizes": {"vocab": V, "embed": E, "hidden": H, "attention": A, "grid": "7x7x1280"},
            "matmul_peak_gflops": peak / 1e9, "torch_threads": torch.get_num_threads(), "train_step": {}}
  for b in () if a.skip_train else (32, 64):
    r, compile_s, xla_flops = jax_train_step(b, a.length, a.repeats, a.deep_output)
    need = needed_train_gflop(b, a.length, a.deep_output)
    entry = {"jaxcap": {"captions_per_s": b / r["median_s"], "captions_per_s_min": b / r["max_s"],
                        "captions_per_s_max": b / r["min_s"], "compile_s": compile_s,
                        "xla_gflop": xla_flops / 1e9, "needed_gflop": need,
                        "needed_flops_share_of_peak": need * 1e9 / r["median_s"] / peak,
                        "xla_flops_share_of_peak": xla_flops / r["median_s"] / peak}}
    if not a.skip_torch:
      tr = torch_train_step(b, a.length, max(3, a.repeats // 2))
      entry["pytorch"] = {"captions_per_s": b / tr["median_s"], "captions_per_s_min": b / tr["max_s"],
                          "captions_per_s_max": b / tr["min_s"]}
      entry["ratio"] = entry["jaxcap"]["captions_per_s"] / entry["pytorch"]["captions_per_s"]
    result["train_step"][f"batch{b}_len{a.length}"] = entry
  result["decode"] = {"jaxcap": jax_decode(a.repeats, a.deep_output, a.decode_dtype), "dtype": a.decode_dtype,
                      "lstm_matvec_by_weight_dtype": low_precision_matvec(a.repeats)}
  if not a.skip_torch:
    td = torch_decode(max(3, a.repeats // 2))
    result["decode"]["pytorch"] = td
    for k in (3, 5):
      result["decode"][f"ratio_beam{k}_b1_latency"] = (td[f"beam{k}_b1"]["ms_per_image"] /
                                                        result["decode"]["jaxcap"][f"beam{k}_b1"]["ms_per_image"])
  result["machine"] = machine()
  emit(result)


if __name__ == "__main__":
  main()
