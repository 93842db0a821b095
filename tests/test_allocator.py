"""jaxcap's commands keep freed memory for reuse on a CPU backend (`jaxcap/allocator.py`): a large buffer freed
and allocated again, as a train step's temporaries are every step, is not faulted in from the kernel again.
Importing jaxcap changes nothing process-wide. Measured in page faults, not time, so it holds on a busy machine."""
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")

ROUNDS = """
import json, resource
import sys, jaxcap, numpy as np
if sys.argv[1:] == ["apply"]:
  from jaxcap import allocator
  allocator.for_backend()
faults = []
for _ in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  np.ones(16 * 2**20, np.float32).sum()  # 64 MB allocated, written, freed
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def python(code: str, *args: str, **env) -> str:
  """stdout of `python -c code args` in this environment without the user's malloc choices, plus `env`."""
  clean = {k: v for k, v in os.environ.items() if k not in ("JAXCAP_MALLOC", "GLIBC_TUNABLES")}
  return subprocess.run([sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True, text=True,
                        check=True).stdout.strip()


def test_a_freed_64mb_buffer_is_reused_not_faulted_in_again():
  kept = json.loads(python(ROUNDS, "apply"))
  system = json.loads(python(ROUNDS, "apply", JAXCAP_MALLOC="system"))
  # glibc's defaults hand the 64 MB back to the kernel at every free, so every round faults it in again.
  assert min(system[1:]) > 0, system
  assert sum(kept[1:]) * 10 < sum(system[1:]), (kept, system)


def test_importing_jaxcap_leaves_malloc_alone():
  imported = json.loads(python(ROUNDS))
  assert min(imported[1:]) > 0, imported  # glibc's defaults: the freed 64 MB went back to the kernel


def test_malloc_tunables_a_user_set_win():
  code = "import jaxcap.allocator as a; print(a.keep_freed_memory())"
  assert python(code) == "True"
  assert python(code, GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072") == "False"
  assert python(code, JAXCAP_MALLOC="system") == "False"


def test_commands_apply_it_on_the_cpu_backend_only():
  code = "from jaxcap import allocator; print(allocator.for_backend())"
  assert python(code) == "True"
  assert python(code, JAX_PLATFORMS="cpu") == "True"
