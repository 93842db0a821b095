"""FLOPs XLA counts for a function, and this machine's measured matmul peak and memory bandwidth."""
import jax
import jax.numpy as jnp
import numpy as np

from bench.common import timeit


def compiled_flops(fn, *args) -> float:
  """FLOPs XLA counts for one call of jit(fn)(*args) (cost_analysis of the compiled HLO)."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _median_s(f, x, repeats: int) -> float:
  return timeit(lambda: f(x).block_until_ready(), repeats=repeats)["median_s"]


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a jitted n x n f32 matmul: the practical peak this machine reaches (median of repeats)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  return 2 * n ** 3 / _median_s(jax.jit(lambda a: a @ a), a, repeats)


def memory_bandwidth(mbytes: int = 512, repeats: int = 10) -> float:
  """Bytes/s of a jitted sum over an f32 array far larger than the caches: what a step that must read its
  weights from memory can reach (median of repeats)."""
  a = jnp.ones((mbytes * 2 ** 20 // 4,), jnp.float32)
  return a.nbytes / _median_s(jax.jit(jnp.sum), a, repeats)
