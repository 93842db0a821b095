"""FLOP counting and the machine's measured matmul peak, for achieved-FLOP/s figures."""
import time

import jax
import jax.numpy as jnp
import numpy as np


def compiled_flops(fn, *args) -> float:
  """FLOPs XLA counts for one call of jit(fn)(*args) (cost_analysis of the compiled HLO)."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a jitted n x n f32 matmul: the practical peak this machine reaches (median of repeats)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / float(np.median(times))
