"""Compile-only devices and the compile loop: the TPU compiler (libtpu) is found where `requirements-tpu-aot.txt`
says to put it, or wherever JAX itself would find it, and loaded only here, for a topology's compile-only
devices; ordinary runs never load it."""
from __future__ import annotations

import copy
import importlib.util
import os
import time

from jaxcap import paths

# Where requirements-tpu-aot.txt installs libtpu (pip --target): a folder JAX does not search on its own, so CPU
# runs never load it. $JAXCAP_LIBTPU_DIR names another such folder.
LIBTPU_DIR_VARIABLE = "JAXCAP_LIBTPU_DIR"
INSTALL = "pip install --target ~/.cache/jaxcap/libtpu -r requirements-tpu-aot.txt"
# The CUDA PJRT plugin for GPU topologies, likewise in a folder of its own ($JAXCAP_CUDA_PLUGIN_DIR).
CUDA_DIR_VARIABLE = "JAXCAP_CUDA_PLUGIN_DIR"
INSTALL_CUDA = "pip install --target ~/.cache/jaxcap/cuda12 -r requirements-gpu-aot.txt"


def libtpu_dir() -> str:
  return os.environ.get(LIBTPU_DIR_VARIABLE) or os.path.join(paths.cache_root(), "libtpu")


class AotError(Exception):
  """What stops ahead-of-time compilation; one line."""


def libtpu_path() -> str | None:
  """libtpu.so: $TPU_LIBRARY_PATH, an installed `libtpu` package, or `libtpu_dir()`; None when there is none."""
  env = os.environ.get("TPU_LIBRARY_PATH")
  if env and os.path.isfile(env):
    return env
  spec = importlib.util.find_spec("libtpu")
  if spec and spec.submodule_search_locations:
    found = os.path.join(list(spec.submodule_search_locations)[0], "libtpu.so")
    if os.path.isfile(found):
      return found
  found = os.path.join(libtpu_dir(), "libtpu", "libtpu.so")
  return found if os.path.isfile(found) else None


def cuda_plugin_dir() -> str:
  return os.environ.get(CUDA_DIR_VARIABLE) or os.path.join(paths.cache_root(), "cuda12")


def _cpu_backend_only() -> None:
  """JAX's own backends stay CPU: this process has no accelerator, and asking for one would probe for it."""
  import jax
  try:
    jax.config.update("jax_platforms", "cpu")
  except RuntimeError:  # JAX already started (in a test, say) without the compilers in sight: it stays as it is
    pass


def gpu_devices(topology: str) -> list:
  """The compile-only devices of a GPU topology "h100:<slices>x<hosts>x<GPUs per host>", through the CUDA PJRT
  plugin and XLA's GPU target configuration (`chips.GPU_TARGETS`): no GPU, no CUDA toolkit."""
  import sys

  from jaxcap.aot import chips
  name, _, shape = topology.partition(":")
  folder = cuda_plugin_dir()
  if not os.path.isdir(os.path.join(folder, "jax_plugins")):
    raise AotError(f"the CUDA compiler plugin is not in {folder} (${CUDA_DIR_VARIABLE}); {INSTALL_CUDA}")
  if folder not in sys.path:
    sys.path.append(folder)
  _cpu_backend_only()
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform="cuda", topology=shape or "1x1x1",
                                             target_config=chips.GPU_TARGETS[name]).devices)
  except Exception as e:  # noqa: BLE001
    raise AotError(f"--topology {topology!r}: {str(e).splitlines()[0]}") from None


def devices(topology: str) -> list:
  """The compile-only devices of a TPU topology ("v5e:2x2") or a GPU one ("h100:1x1x8")."""
  if topology.split(":")[0] == "h100":
    return gpu_devices(topology)
  path = libtpu_path()
  if path is None:
    raise AotError(f"the TPU compiler (libtpu) is not in {libtpu_dir()} (${LIBTPU_DIR_VARIABLE}); {INSTALL}")
  os.environ["TPU_LIBRARY_PATH"] = path
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no cloud metadata server to ask, no TPU workers to find
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling touches no chip: no need to lock one
  _cpu_backend_only()
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
  except Exception as e:  # noqa: BLE001  (libtpu's errors for a bad name are RuntimeError/ValueError/XlaRuntimeError)
    raise AotError(f"--topology {topology!r}: {str(e).splitlines()[0]}") from None


def run(config, topologies: list[str], names: list[str], sizes, log=print, per_chip_batch: int = 0) -> list[dict]:
  """Every program of `names` compiled for every topology; a row of figures each (`report.analyse`).
  `per_chip_batch`: train.batch_size is that times the topology's chips (data parallel at a fixed per-chip
  batch: how a run scales out)."""
  from jaxcap import config_check
  from jaxcap.aot import chips, programs, report
  unknown = [n for n in names if n not in programs.PROGRAMS]
  if unknown:
    raise AotError(f"--programs: unknown {unknown[0]!r}; choose from {', '.join(programs.PROGRAMS)}")
  rows = []
  for topology in topologies:
    chip = chips.chip_of(topology)
    devs = devices(topology)
    if per_chip_batch:
      config = copy.deepcopy(config)
      config.train.batch_size = per_chip_batch * len(devs)
    config_check.check(config, len(devs), folders=False)
    for program in programs.build(config, devs, names, sizes, chip.hbm_bytes, log):
      log(f"{topology}: compiling {program.name} ...")
      t0 = time.time()
      compiled = program.lower().compile()
      row = {"topology": topology, "chips": len(devs), "program": program.name, "compile_s": time.time() - t0,
             "global_batch": program.units,
             **report.analyse(compiled, chip, program.units, program.unit, program.repeats)}
      log(f"{topology}: {program.name}: {row['memory_bytes'] / 2**30:.2f} GiB per chip, compiled in "
          f"{row['compile_s']:.0f} s")
      rows.append(row)
  return rows
