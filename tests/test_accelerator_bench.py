"""bench/accelerator.py end to end at tiny sizes: the script the GPU machine runs once must not fail there."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_accelerator_bench_small(tmp_path):
  md = tmp_path / "accelerator.md"
  out = subprocess.run([sys.executable, "-m", "bench.accelerator", "--small", "--sections", "peak,train,decode,torch",
                        "--batch_sizes", "4", "--dtypes", "bfloat16", "--decode_dtypes", "float32",
                        "--markdown", str(md)], cwd=ROOT, capture_output=True, text=True, timeout=900, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert not result["tensorflow_imported"]  # the lent GPU machines have no TensorFlow
  assert [r for r in result["rows"] if "error" in r or "skipped" in r] == []
  train = [r for r in result["rows"] if r["section"] == "train"]
  assert {r["k"] for r in train} == {1, 2} and all("ratio" in r for r in train)
  assert "| train |" in md.read_text()
