"""What a compiled program says about itself, per chip: memory against the chip's HBM, FLOPs and bytes of HBM
traffic per call, FLOP per byte against the chip's balance point, a roofline bound in units per second, the
collectives by kind with their bytes, and every host transfer or callback. These are the compiler's figures
(`memory_analysis`, `cost_analysis`, the optimized HLO) and a roofline, not measured times."""
from __future__ import annotations

import re
from collections import Counter

from jaxcap.aot.chips import Chip

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast")
# An HLO instruction: "%name = <shape> <opcode>(<operands>), attributes".
# The shape runs up to the first " opcode(": layouts hold parentheses ("{1,0:T(8,128)}") but no such pattern.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([a-z][\w\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z\d]*)\[([\d,]*)\]")


def shape_bytes(shape: str, elements: bool = False) -> int:
  """Bytes (or `elements`) of an HLO shape string: "f32[512,2048]{1,0}" or a tuple "(f32[2]{0}, bf16[3,4]{1,0})"."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype in _BYTES:
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      total += n * (1 if elements else _BYTES[dtype])
  return total


def collectives(hlo: str) -> dict[str, dict]:
  """{kind: {"ops": n, "bytes": result bytes, "elements": result elements}} of the collectives in the program
  text (async pairs counted once, at their start; an op inside a loop body runs once per iteration: counted once
  here). XLA reduces a gradient in the dtype the backward computed it in (bf16 under bf16 compute), so an
  all-reduce of every gradient has the parameters' elements, not always their float32 bytes."""
  out: dict[str, dict] = {}
  for line in hlo.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    shape, op = m.groups()
    kind = op.removesuffix("-start")
    if kind not in COLLECTIVES or op.endswith("-done"):
      continue
    if op.endswith("-start") and shape.startswith("(") and kind != "all-reduce":
      # (operand, result, ...): the largest buffer is the result
      shape = max(_split_tuple(shape), key=shape_bytes, default="")
    entry = out.setdefault(kind, {"ops": 0, "bytes": 0, "elements": 0})
    entry["ops"] += 1
    entry["bytes"] += shape_bytes(shape)
    entry["elements"] += shape_bytes(shape, elements=True)
  return out


def _split_tuple(shape: str) -> list[str]:
  return [a + "[" + d + "]" for a, d in _ARRAY.findall(shape)]


def host_transfers(hlo: str) -> list[str]:
  """Every instruction that moves data between the chip and the host: host sends and receives, infeed and
  outfeed, and custom calls into the host (Python callbacks)."""
  found = Counter()
  for line in hlo.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    op = m.group(2)
    if op in ("infeed", "outfeed") or (op in ("send", "recv") and "is_host_transfer=true" in line):
      found[op] += 1
    elif op == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', line)
      if target and re.search(r"callback|host", target.group(1), re.I):
        found[f"custom-call {target.group(1)}"] += 1
  return [f"{what} x{n}" for what, n in sorted(found.items())]


def analyse(compiled, chip: Chip, units: int, unit: str, repeats: int = 1) -> dict:
  """The per-chip figures of one compiled program, `units` of `unit` per call. XLA's cost analysis counts a loop
  body once where it cannot know the trip count (a K-step dispatch's outer loop, a decoding loop that stops
  when every caption has ended): the figures are then one step's, and the roofline bound assumes `repeats` such
  steps per call (a decoding call's train.decode_max_len; 1 for a train step). XLA:GPU gives no cost analysis
  without a GPU: FLOPs, bytes and the roofline are then None."""
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  hlo = compiled.as_text()
  row = {"memory_bytes": int(peak), "argument_bytes": int(mem.argument_size_in_bytes),
         "temp_bytes": int(mem.temp_size_in_bytes), "hbm_bytes": chip.hbm_bytes, "fits": peak <= chip.hbm_bytes,
         "balance_flop_per_byte": chip.balance, "unit": unit, "steps_per_call": repeats,
         "collectives": collectives(hlo), "host_transfers": host_transfers(hlo)}
  if "flops" not in cost:  # XLA:GPU analyses costs only with a device at hand
    return {**row, "flops_per_step": None, "bytes_per_step": None, "flop_per_byte": None, "bound_by": None,
            "roofline_per_s": None}
  flops, nbytes = float(cost["flops"]), float(cost.get("bytes accessed", 0.0))
  t_math, t_memory = flops / chip.bf16_flops, nbytes / chip.hbm_bytes_per_s
  bound_s = max(t_math, t_memory)
  return {**row, "flops_per_step": flops, "bytes_per_step": nbytes,
          "flop_per_byte": flops / nbytes if nbytes else float("inf"),
          "bound_by": "compute" if t_math >= t_memory else "memory",
          "roofline_per_s": units / (bound_s * repeats) if bound_s else float("inf")}


def _si(x: float, unit: str = "") -> str:
  for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= div:
      return f"{x / div:.3g} {prefix}{unit}"
  return f"{x:.3g} {unit}"


def markdown(rows: list[dict]) -> str:
  """One table: a row per (topology, program)."""
  head = ("| topology | program | batch | per-chip memory / HBM | GFLOP / step | GB / step | FLOP/byte (balance) | "
          "bound | roofline | collectives | host transfers | compile s |")
  lines = [head, "|" + " --- |" * (head.count("|") - 1)]
  for r in rows:
    coll = ", ".join(f"{k} x{v['ops']} {_si(v['bytes'], 'B')} ({_si(v.get('elements', 0))}values)"
                     for k, v in r["collectives"].items()) or "none"
    costs = ("n/a | n/a | n/a | n/a | n/a" if r["flops_per_step"] is None else
             f"{r['flops_per_step'] / 1e9:.1f} | {r['bytes_per_step'] / 1e9:.2f} | {r['flop_per_byte']:.0f} "
             f"({r['balance_flop_per_byte']:.0f}) | {r['bound_by']} | {_si(r['roofline_per_s'])}{r['unit']}/s")
    lines.append(
        f"| {r['topology']} | {r['program']} | {r.get('global_batch', '')} | {r['memory_bytes'] / 2**30:.2f} / "
        f"{r['hbm_bytes'] / 2**30:.0f} GiB{'' if r['fits'] else ' (does not fit)'} | {costs} | {coll} | "
        f"{', '.join(r['host_transfers']) or 'none'} | {r['compile_s']:.0f} |")
  return "\n".join(lines) + "\n"
