"""Timing shared by the benchmark scripts: median/min/max seconds of a call or a jitted train step, machine facts."""
import json
import os
import platform
import statistics
import time


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


def machine() -> dict:
  return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


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
