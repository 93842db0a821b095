"""Builds a workdir's consensus index and prints its path.

    python -m jaxcap.consensus --checkpoint workdirs/flickr8k_lite0 [--data_dir DIR] [--k 15 --weight 4]
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxcap.consensus", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="workdir (the index goes into it)")
  p.add_argument("--data_dir", default=None, help="dataset folder (default: the one in the checkpoint's config)")
  p.add_argument("--k", type=int, default=15, help="neighbours per photo (15 was best on Flickr8k dev)")
  p.add_argument("--weight", type=float, default=4.0, help="consensus weight beside the beam score (4 on Flickr8k dev)")
  a = p.parse_args(argv)
  from jaxcap import allocator, logs  # after the flags: --help and a bad flag answer without loading JAX and TensorFlow
  from jaxcap.checkpoint import CheckpointError
  from jaxcap.consensus.build import write
  from jaxcap.consensus.index import ConsensusError
  from jaxcap.data import DataError

  logs.install()
  allocator.for_backend()  # glibc malloc keeps freed step buffers for reuse (CPU only)
  try:
    path = write(a.checkpoint, a.data_dir, a.k, a.weight)
  except (CheckpointError, DataError, ConsensusError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
