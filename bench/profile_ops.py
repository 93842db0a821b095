"""Where the time goes inside one jitted function: a jax.profiler trace, summed per HLO op and per source line.

    python -m bench.profile_ops train_step [--batch 64] [--length 22] [--deep_output]
    python -m bench.profile_ops beam_search [--batch 1] [--beam 5]

Runs the function once to compile, traces `--calls` calls with `jax.profiler.trace(create_perfetto_trace=True)`,
and sums the trace's op events by name. Each op name is looked up in the compiled HLO of the same executable,
so every row also says which model code it came from (the op's `op_name` metadata, e.g.
`.../cell/lstm/dot_general`). Ops run on several threads at once, so the per-op times can add up to more than
the wall time. Prints one JSON object: wall ms per call and the top ops with their share of the summed op time.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import numpy as np

from bench.common import emit, machine

V, E, H, A, N, C = 3000, 512, 512, 512, 49, 1280
SKIP = ("$", "Thunk", "Pjit", "Slinky", "Common", "ThreadpoolListener", "end: ")


def op_sources(hlo_text: str) -> dict:
  """HLO instruction name -> the source op_name in its metadata (the innermost model path)."""
  out = {}
  for m in re.finditer(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text):
    out[m.group(1)] = m.group(2).replace("jit(", "").replace(")", "")
  return out


def profile(compiled, args, calls: int, args_top: int = 15) -> dict:
  import jax
  jax.block_until_ready(compiled(*args))
  t = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(compiled(*args))
  wall_ms = 1000 * (time.perf_counter() - t) / calls
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(calls):
        jax.block_until_ready(compiled(*args))
    path = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(SKIP):
      total[e["name"]] += e.get("dur", 0.0)
      count[e["name"]] += 1
  sources = op_sources(compiled.as_text())
  op_sum = sum(total.values())
  by_source = collections.Counter()
  for name, us in total.items():
    by_source[re.sub(r"\.\d+$", "", sources.get(name, name)).split("/while/body/")[-1]] += us
  top = [{"op": n, "ms_per_call": round(us / 1000 / calls, 3), "share": round(us / op_sum, 3),
          "events_per_call": count[n] / calls, "source": sources.get(n, "")} for n, us in total.most_common(args_top)]
  src = [{"source": s, "ms_per_call": round(us / 1000 / calls, 3), "share": round(us / op_sum, 3)}
         for s, us in by_source.most_common(args_top)]
  return {"wall_ms_per_call": wall_ms, "summed_op_ms_per_call": op_sum / 1000 / calls, "top_ops": top,
          "by_source": src}


def train_step_case(args):
  import jax
  from bench.decoder import make_jax_train_step
  step, state, batch = make_jax_train_step(args.batch, args.length, args.deep_output)
  compiled = jax.jit(step).lower(state, batch).compile()
  return compiled, (state, batch)


def beam_case(args):
  import jax
  import jax.numpy as jnp
  from jaxcap import decode
  from jaxcap.models.decoder import Decoder
  dec = Decoder(vocab_size=V, mode="attend", embed_dim=E, hidden_dim=H, attention_dim=A, dropout=0.0,
                deep_output=args.deep_output)
  params = dec.init(jax.random.key(0), jnp.zeros((1, 7, 7, C)), jnp.zeros((1, 2), jnp.int32))["params"]
  params["out"]["bias"] = params["out"]["bias"].at[2].add(-1e4)  # never <end>: all 20 steps
  grid = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, 7, 7, C)), jnp.float32)
  f = lambda p, g: decode.beam_search(dec, p, g, args.beam, 20, 0.0)  # noqa: E731
  return jax.jit(f).lower(params, grid).compile(), (params, grid)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("what", choices=["train_step", "beam_search"])
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--length", type=int, default=22)
  p.add_argument("--beam", type=int, default=5)
  p.add_argument("--deep_output", action="store_true")
  p.add_argument("--calls", type=int, default=5)
  p.add_argument("--top", type=int, default=15, help="rows in each table")
  args = p.parse_args()
  if args.batch is None:
    args.batch = 64 if args.what == "train_step" else 1
  compiled, call_args = (train_step_case if args.what == "train_step" else beam_case)(args)
  emit({"what": args.what, "batch": args.batch, "length": args.length, "beam": args.beam,
        "deep_output": args.deep_output, **profile(compiled, call_args, args.calls, args.top), "machine": machine()})


if __name__ == "__main__":
  main()
