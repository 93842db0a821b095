"""Frozen-encoder forward throughput (images/s), jitted, next to the PyTorch reference in the same run.

    python -m bench.encoder [--batch_sizes 32 64] [--repeats 5]

EfficientNet-Lite0: jaxcap with the shifted depthwise kernel (the CPU default), jaxcap with XLA grouped
convolution, and the efficientnet-lite-pytorch model. ResNet-50: jaxcap and a torchvision-layout
torch model. Achieved FLOP/s from XLA's cost analysis, over a jitted 2048^2 f32 matmul measured in the same
run. torch uses as many threads as JAX sees cores. Prints one JSON object. Needs requirements-torch.txt.
"""
import argparse
import os
import time

import numpy as np

from bench.common import emit, machine, timeit


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 64])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--skip_resnet", action="store_true")
  a = p.parse_args()
  import jax
  import jax.numpy as jnp
  import torch
  from efficientnet_lite_pytorch import EfficientNet

  from bench.flops import compiled_flops, matmul_peak
  from jaxcap.models import encoders
  from tests import torch_reference

  torch.set_num_threads(os.cpu_count())
  peak = matmul_peak()
  results = {}

  def bench_flax(name, impl, bs):
    enc = encoders.make_encoder(name, depthwise_impl=impl)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 255, (bs, 224, 224, 3)), jnp.uint8)
    v = jax.jit(enc.init)(jax.random.key(0), x[:1])
    f = jax.jit(lambda v, x: enc.apply(v, x)[0])
    t = time.perf_counter()
    f(v, x).block_until_ready()
    compile_s = time.perf_counter() - t
    r = timeit(lambda: f(v, x).block_until_ready(), repeats=a.repeats)
    flops = compiled_flops(lambda v, x: enc.apply(v, x)[0], v, x)
    return {"images_per_s": bs / r["median_s"], "images_per_s_min": bs / r["max_s"],
            "images_per_s_max": bs / r["min_s"], "compile_s": compile_s, "gflop_per_image": flops / bs / 1e9,
            "fraction_of_matmul_peak": flops / r["median_s"] / peak}

  def bench_torch(model, bs):
    x = torch.tensor(np.random.default_rng(0).normal(size=(bs, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
      r = timeit(lambda: model(x), repeats=a.repeats)
    return {"images_per_s": bs / r["median_s"], "images_per_s_min": bs / r["max_s"],
            "images_per_s_max": bs / r["min_s"]}

  lite_ref = EfficientNet.from_name("efficientnet-lite0").eval()
  res_ref = torch_reference.ResNet(*torch_reference.resnet(50)).eval()
  for bs in a.batch_sizes:
    r = {"jaxcap_shifted": bench_flax("efficientnet_lite0", "shifted", bs),
         "jaxcap_grouped_conv": bench_flax("efficientnet_lite0", "conv", bs),
         "pytorch": bench_torch(lite_ref, bs)}
    r["ratio_jaxcap_over_pytorch"] = r["jaxcap_shifted"]["images_per_s"] / r["pytorch"]["images_per_s"]
    r["ratio_shifted_over_grouped"] = r["jaxcap_shifted"]["images_per_s"] / r["jaxcap_grouped_conv"]["images_per_s"]
    results[f"efficientnet_lite0_b{bs}"] = r
    if not a.skip_resnet:
      r = {"jaxcap": bench_flax("resnet50", "auto", bs), "pytorch": bench_torch(res_ref, bs)}
      r["ratio_jaxcap_over_pytorch"] = r["jaxcap"]["images_per_s"] / r["pytorch"]["images_per_s"]
      results[f"resnet50_b{bs}"] = r
  emit({"bench": "encoder_forward", "matmul_peak_gflops": peak / 1e9, "flops_from": "XLA cost_analysis",
        "torch_threads": torch.get_num_threads(), "results": results, "machine": machine()})


if __name__ == "__main__":
  main()
