"""The accelerators `jaxcap.aot` reports against: per chip, the peak dense bf16 FLOP/s, the HBM size and the HBM
bandwidth, each from the vendor's public page named in `source`. A roofline divides the compiler's FLOPs and
bytes by these; it is a bound, not a measured time."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  bf16_flops: float        # peak dense bf16 matmul FLOP/s per chip
  hbm_bytes: int           # HBM per chip
  hbm_bytes_per_s: float   # HBM bandwidth per chip
  source: str

  @property
  def balance(self) -> float:
    """FLOP per byte of HBM traffic at which the chip's math and memory take equal time."""
    return self.bf16_flops / self.hbm_bytes_per_s


GiB = 2**30
CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * GiB, 1228e9, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB, 2765e9, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e (Trillium)", 918e12, 32 * GiB, 1640e9, "https://cloud.google.com/tpu/docs/v6e"),
    "h100": Chip("NVIDIA H100 SXM5", 989e12, 80 * 10**9, 3.35e12,
                 "https://www.nvidia.com/en-us/data-center/h100/ (datasheet, dense bf16)"),
}


# What XLA's GPU compiler needs to know of a GPU it cannot see (its `GpuTargetConfig`, text format): the
# NVIDIA H100 SXM5 80 GB's public figures (H100 datasheet; CUDA C++ Programming Guide, compute capability 9.0).
H100_TARGET = """gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 shared_memory_per_block_optin: 232448 threads_per_core_limit: 2048
  core_count: 132 fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84942979072 registers_per_core_limit: 65536 registers_per_block_limit: 65536
  cuda_compute_capability { major: 9 minor: 0 }
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 1 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
GPU_TARGETS = {"h100": H100_TARGET}


def chip_of(topology: str) -> Chip:
  """The chip of a topology name ("v5e:2x2" -> v5e; "v5litepod-16" -> v5e; "h100:1x1x8" -> H100); a one-line
  error naming the known ones otherwise."""
  family = topology.split(":")[0].split("-")[0].lower().replace("v5litepod", "v5e").replace("v5lite", "v5e")
  if family not in CHIPS:
    raise ValueError(f"--topology {topology!r}: unknown chip {family!r}; known: {', '.join(CHIPS)}")
  return CHIPS[family]
