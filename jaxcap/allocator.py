"""glibc malloc settings for jaxcap's CPU processes: the commands (train, evaluate, caption, the app) apply them
when JAX's backend is the CPU (`for_backend`); importing jaxcap changes nothing process-wide.

With glibc's defaults, the buffers XLA's CPU runtime allocates and frees every step (the step's temporaries,
tens to hundreds of MB) go back to the kernel when freed (mmap'd above 32 MB; per-thread arenas unmapped or
trimmed once empty), and each new step faults the same memory in again, zeroed page by page: on a 2-core CPU
about 15% of a training run's CPU time (`sys` in `/usr/bin/time`). Keeping freed memory in one heap (no mmap
for large blocks, no trimming, one arena) lets the next step reuse it; it changes no result, only where buffers
live. Set by hand because glibc reads its own environment knob (GLIBC_TUNABLES) only at process start, before
Python runs. `JAXCAP_MALLOC=system` keeps glibc's defaults (for an A/B); a user who sets malloc tunables in
GLIBC_TUNABLES keeps them. On an accelerator the step's buffers live in device memory, so the host keeps glibc's
defaults.
"""
import ctypes
import importlib.util
import os
import sys

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
  """Tells glibc malloc to keep freed memory for reuse; True when applied (Linux with glibc, neither
  JAXCAP_MALLOC=system nor malloc tunables chosen by the user)."""
  if (not sys.platform.startswith("linux") or os.environ.get("JAXCAP_MALLOC") == "system"
      or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # musl and other libcs have no mallopt
    return False
  return all(mallopt(param, value) == 1 for param, value in
             ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_ARENA_MAX, 1)))


def for_backend() -> bool:
  """`keep_freed_memory()` when JAX computes on the CPU; True when applied. Decided before JAX starts its thread
  pools where possible (JAX_PLATFORMS=cpu, or no accelerator plugin installed), so that every thread allocates
  from the one heap; else JAX is asked for its backend."""
  if _cpu_certain():
    return keep_freed_memory()
  import jax
  return jax.default_backend() == "cpu" and keep_freed_memory()


def _cpu_certain() -> bool:
  """JAX will compute on the CPU: JAX_PLATFORMS says so, or no accelerator plugin is importable (libtpu, a CUDA
  or ROCm plugin: JAX finds those through the `jax_plugins` namespace or their own package)."""
  platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return platforms == ["cpu"]
  return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu", "jax_cuda12_plugin",
                                                               "jax_cuda13_plugin", "jax_rocm7_plugin"))
