"""Shared by the benchmark scripts (and the browser tests): median/min/max seconds of a call or a jitted train
step, machine facts, a real Streamlit server of the app and the Chromium flags to drive it."""
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

from jaxcap import allocator

allocator.for_backend()  # as the commands do: on a CPU backend glibc keeps the freed step buffers for reuse
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: serve_app.py, jaxcap/
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # playwright: a fresh temporary profile


def timeit(fn, repeats: int = 5, warmup: int = 1) -> dict:
  """Runs fn() warmup + repeats times; returns median/min/max seconds of the timed runs."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats}


def cpu() -> dict:
  """The processor as XLA's CPU code sees it: model name, family/model/stepping, and the vector extensions (AVX,
  AVX-512, AMX, ...) that decide which kernels it compiles, so the last digits of a run can be matched to it."""
  info: dict[str, str] = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
        if not line.strip():
          break  # the first processor's block describes them all
  except OSError:
    return {"model": platform.processor() or platform.machine()}
  flags = info.get("flags", "").split()
  return {"model": info.get("model name", "?"),
          "family_model_stepping": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
          "vector_extensions": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))}


def machine() -> dict:
  return {"cpus": os.cpu_count(), "cpu": cpu(), "platform": platform.platform(),
          "python": platform.python_version()}


def emit(result: dict) -> None:
  print(json.dumps(result))


def time_train_step(step, state, batch, repeats: int):
  """(timing, compile seconds, final state) of a jitted, state-donating step(state, batch) -> (state, metrics)."""
  import jax
  t0 = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch)
    jax.block_until_ready(metrics)

  return timeit(run, repeats=repeats), compile_s, holder["state"]


@contextlib.contextmanager
def streamlit_app(app: str, checkpoint: str | list[str], timeout: float = 120, env: dict | None = None,
                  log=subprocess.DEVNULL):
  """Yields (url, server process) of a real `streamlit run APP -- --checkpoint CHECKPOINT` (one per checkpoint
  of a list: an ensemble) on a free localhost port, run from the repository with this checkout's jaxcap, once
  its health check answers (or `timeout` has passed: the pages then show what is wrong). Its output goes to
  `log`; it is stopped on exit."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", app, "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--",
                             *[a for c in ([checkpoint] if isinstance(checkpoint, str) else checkpoint)
                               for a in ("--checkpoint", c)]],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})}, stdout=log,
                            stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + timeout
    while time.time() < deadline:
      try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
          break
      except OSError:
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/", server
  finally:
    server.terminate()
    try:
      server.wait(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait(timeout=30)
