"""Memory budgets: how much host and device memory the "auto" choices (feature store, image feed, feed
placement) may plan for, agreed on by every process of a job, and the one GB formatter their logs use."""
from __future__ import annotations

import os

import jax
import numpy as np


def gb(nbytes: float, digits: int = 2) -> str:
  """`nbytes` as "x.xx GB" (GiB, `digits` decimals)."""
  return f"{nbytes / 2**30:.{digits}f} GB"


def available_memory() -> int:
  """Bytes of host memory available now (Linux MemAvailable; else free physical pages)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def host_budget(config) -> int:
  """Bytes of host memory the "auto" choices may plan for: `train.feature_memory_gb`, else half the available
  memory."""
  limit = config.train.feature_memory_gb
  return int(limit * 2**30) if limit > 0 else available_memory() // 2


def device_budget(config, devices) -> int:
  """Bytes of train data a device may hold: `train.device_memory_gb`, else half of what the device has free (CPU
  devices share the host's memory: half the available memory over the local devices)."""
  if config.train.device_memory_gb > 0:
    return int(config.train.device_memory_gb * 2**30)
  stats = jax.local_devices()[0].memory_stats() or {}  # only this process's devices can be asked
  if "bytes_limit" in stats:
    budget = (stats["bytes_limit"] - stats.get("bytes_in_use", 0)) // 2
  else:
    budget = available_memory() // 2 // max(jax.local_device_count(), 1)
  return process_min(budget)  # every process must make the same choice, or their collectives would not match


def process_min(value: int) -> int:
  """The smallest of every process's `value` (itself in a one-process job): a choice all processes agree on."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return int(np.min(multihost_utils.process_allgather(np.int64(value))))
