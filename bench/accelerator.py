"""The accelerator bench: one run, one JSON object, and the Markdown table for bench/README.md.

    python -m bench.accelerator --markdown $OUT/accelerator.md > $OUT/accelerator.json    # on a GPU machine
    python -m bench.accelerator --small --budget_s 300                                    # CPU smoke run

Imports jax, flax, optax and numpy (and torch for the baseline), never TensorFlow: the lent GPU machines have
none (the jaxcap modules it imports are checked to pull none in; `feeds.host.chunks` is not imported for that
reason). Random data of the real shapes: 7x7x1280 grids (float16, as cached), the real train vocabulary size
(2,535 tokens at min count 5), Flickr8k train caption lengths (the histogram below, from Flickr8k.token.txt with
`vocab.normalize`, <start> and <end> counted, cut at 24: mean 12.8 tokens), the shipped decoder of
configs/flickr8k_lite0.py (attend, 512 wide, deep output). Sections, each row timed after compilation
(median of --repeats), with its compile time (trace + lower + XLA) where it has one:
  peak      jitted n x n matmul FLOP/s: f32 at JAX's default precision (what the f32 rows run: TF32 on recent
            NVIDIA GPUs), f32 at "highest", bf16. Measured first, in the same run as the rows they divide.
  train     decoder train step on the device-resident feed (`device_feed.DeviceCaptions`, data put on the device
            once, each batch gathered there by index), K steps per jitted call (`train_state.make_dispatch`),
            B x dtype x K; captions all --length tokens (one compiled shape). captions/s, the share of the peak
            of its dtype by the hand count of the math (bench.decoder's formula) and XLA's count (K = 1).
  epoch     one Flickr8k-sized epoch: 30,000 captions of 6,000 images, real length distribution, length
            buckets (several shapes: all compiled in an untimed first epoch, whose time is the compile row).
  decode    greedy, beam 3, beam 5 over --decode_images (1,000) images at batch 1,000, and at batch 1 over
            --b1_images images scaled to 1,000 (stated in the row). <end> is never emitted (its bias -1e4, as
            in bench.decoder), so every caption runs all 20 steps: an upper bound.
  finetune  Lite0 + decoder train step on random uint8 images (encoder trained, bf16), images/s.
  torch     the PyTorch Show-Attend-Tell baseline (bench/torch_sat.py, on CUDA when there is one) at the same
            sizes: train step (f32, and bf16 autocast), epoch, greedy (its beam search with k = 1) and beam
            search, which it runs one image at a time (over --torch_images images, scaled to 1,000). Each jaxcap
            row carries the ratio to its baseline row. The fine-tune row has none (no torch Lite0 here).
Every row runs inside a guard: a failure (an OOM at B = 1024, say) becomes the row's "error" and the run goes
on; rows past --budget_s are "skipped". Partial results go to stderr as each row ends; the JSON to stdout.
"""
import argparse
import json
import os
import statistics
import sys
import time
import traceback

import numpy as np

from bench.common import machine, timeit

# Flickr8k train captions by token count (index = tokens incl. <start>/<end>, 24 = 24 or more): 30,000 captions.
LENGTH_HISTOGRAM = [0, 0, 0, 0, 15, 126, 348, 864, 1963, 2539, 2932, 3313, 3324, 3133, 2774, 2315, 1852, 1326, 972,
                    663, 514, 362, 206, 134, 325]
GRID_HW = 7


def needed_train_gflop(b: int, t: int, v: int, e: int, h: int, a: int, c: int, n: int = 49) -> float:
  """bench.decoder.needed_train_gflop (deep output) with every size a parameter: multiply-adds x2 of the math the
  step needs, forward; backward counted as 2x forward."""
  per_step = h * (a + c) + n * a + n * c + (c + h) * 4 * h + e * 4 * h + (h + c) * e + e * v
  per_image = n * c * a + 2 * c * h
  return 3 * 2 * b * (t * per_step + per_image) / 1e9


def dispatch_chunks(steps: int, k: int) -> list[tuple[int, int]]:
  """(first step, steps) per call: `jaxcap.feeds.host.chunks` for one objective (that module imports TensorFlow)."""
  return [(s, min(k, steps - s)) for s in range(0, steps, k)]


class Runner:
  """Rows, each under a guard and the time budget; partial results to stderr."""

  def __init__(self, budget_s: float):
    self.deadline, self.rows = time.monotonic() + budget_s, []

  def row(self, section: str, name: str, fn, **params) -> dict:
    r = {"section": section, "name": name, **params}
    if time.monotonic() > self.deadline:
      r["skipped"] = "time budget (--budget_s) spent"
    else:
      t0 = time.perf_counter()
      try:
        r.update(fn())
      except Exception as e:  # noqa: BLE001 - one failing row (an OOM, say) must not end the run
        r["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        traceback.print_exc(file=sys.stderr)
      r["row_wall_s"] = time.perf_counter() - t0
    self.rows.append(r)
    print(json.dumps(r), file=sys.stderr, flush=True)
    return r


def lengths_like_flickr8k(m: int, max_len: int, rng) -> np.ndarray:
  p = np.asarray(LENGTH_HISTOGRAM, np.float64)
  return np.minimum(rng.choice(len(p), size=m, p=p / p.sum()), max_len).astype(np.int32)


def make_captions(images: int, lengths: np.ndarray, vocab: int, max_len: int, rng):
  from jaxcap.data import batching
  tokens = rng.integers(4, vocab, (len(lengths), max_len)).astype(np.int32)
  tokens[:, 0] = 1
  tokens[np.arange(len(lengths)), lengths - 1] = 2
  tokens[np.arange(max_len)[None, :] >= lengths[:, None]] = 0
  return batching.CaptionPairs(np.repeat(np.arange(images, dtype=np.int32), len(lengths) // images), tokens, lengths)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true", help="CPU smoke run: tiny sizes everywhere (figures mean nothing)")
  p.add_argument("--sections", default="peak,train,epoch,decode,finetune,torch")
  p.add_argument("--budget_s", type=float, default=1500, help="rows starting past this many seconds are skipped")
  p.add_argument("--markdown", default="", help="also write the rows as a Markdown table here")
  p.add_argument("--batch_sizes", default="64,256,1024")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--ks", default="1,8", help="steps per dispatch")
  p.add_argument("--backwards", default="manual", help="attention backward(s) of the train rows: manual,autodiff")
  p.add_argument("--length", type=int, default=16, help="tokens per caption in the train-step rows")
  p.add_argument("--steps", type=int, default=48, help="train steps per timed run")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--images", type=int, default=6000, help="train images (5 captions each) of the epoch")
  p.add_argument("--epoch_runs", default="1024:bfloat16:8,64:float32:1", help="B:dtype:K of each epoch row")
  p.add_argument("--vocab", type=int, default=2535)
  p.add_argument("--matmul_n", type=int, default=8192)
  p.add_argument("--decode_images", type=int, default=1000)
  p.add_argument("--b1_images", type=int, default=100, help="images decoded at batch 1 (scaled to --decode_images)")
  p.add_argument("--decode_dtypes", default="float32,bfloat16")
  p.add_argument("--finetune_batch_sizes", default="128,256")
  p.add_argument("--finetune_encoder", default="efficientnet_lite0")
  p.add_argument("--finetune_image_size", type=int, default=224)
  p.add_argument("--torch_images", type=int, default=50, help="images the torch beam search runs (one at a time)")
  a = p.parse_args()
  if a.small:
    a.batch_sizes, a.ks, a.steps, a.repeats, a.images, a.vocab, a.matmul_n = "4,8", "1,2", 4, 2, 40, 300, 256
    a.epoch_runs, a.decode_images, a.b1_images, a.torch_images = "16:bfloat16:2,8:float32:1", 16, 2, 2
    a.finetune_batch_sizes, a.finetune_image_size = "2", 64
  # JAX takes 75% of a GPU's memory up front by default; leave torch room for its rows in the same process.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh

  from configs import flickr8k_lite0
  from jaxcap import decode, device_feed, objectives, train_state
  from jaxcap.models.decoder import Decoder
  sections = set(a.sections.split(","))
  width, channels = (64, 64) if a.small else (512, 1280)
  v, max_len = a.vocab, 24
  runner = Runner(a.budget_s)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  dev = jax.devices()[0]
  result = {"bench": "accelerator", "device": f"{dev.platform}: {dev.device_kind}", "device_count": jax.device_count(),
            "jax": jax.__version__, "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
            "small": a.small, "args": vars(a), "machine": machine(),
            "sizes": {"grid": [GRID_HW, GRID_HW, channels], "width": width, "vocab": v, "max_len": max_len}}
  t_start = time.perf_counter()

  # -- peak: the denominators, measured first --------------------------------------------------------------------
  peaks = {}

  def peak(dtype, precision):
    def run():
      n = a.matmul_n
      x = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
      f = jax.jit(lambda x: jnp.matmul(x, x, precision=precision))
      s = timeit(lambda: f(x).block_until_ready(), repeats=10)["median_s"]
      peaks[(dtype, precision)] = 2 * n ** 3 / s
      return {"tflops": 2 * n ** 3 / s / 1e12}
    return run

  if "peak" in sections:
    for dtype, prec in (("float32", None), ("float32", "highest"), ("bfloat16", None)):
      runner.row("peak", f"matmul {a.matmul_n}^2 {dtype}" + (f" precision={prec}" if prec else ""),
                 peak(dtype, prec), dtype=dtype, precision=prec or "default")
  peak_of = lambda dtype: peaks.get((dtype, None), float("nan"))  # noqa: E731  (nan without the peak section)

  # -- the decoder and its data ----------------------------------------------------------------------------------
  def config(dtype: str, backward: str = "manual", k: int = 1, batch: int = 64):
    cfg = flickr8k_lite0.get_config()
    cfg.model.encoder, cfg.model.pretrained, cfg.model.image_size = "small_cnn", "", 32
    cfg.model.embed_dim = cfg.model.hidden_dim = cfg.model.attention_dim = width
    cfg.model.dtype, cfg.model.attention_backward = dtype, backward
    cfg.train.steps_per_dispatch, cfg.train.batch_size, cfg.data.max_len = k, batch, max_len
    return cfg

  setups = {}

  def decoder_setup(dtype: str, backward: str):
    """(setup, objective) of the cached regime's decoder, host state (each row puts a fresh copy on the device)."""
    if (dtype, backward) not in setups:
      cfg = config(dtype, backward)
      model, variables = train_state.init_model(cfg, v)
      variables["params"]["decoder"] = jax.tree.map(np.asarray, model.decoder.init(
          jax.random.PRNGKey(1), np.zeros((1, GRID_HW, GRID_HW, channels)), np.zeros((1, 2), np.int32))["params"])
      setup = train_state.build(cfg, model, variables, 100_000, trainable=("decoder",))
      setup.state = jax.tree.map(np.array, setup.state)  # host copies: device_put of a device array donates it
      setups[(dtype, backward)] = (setup, objectives.cross_entropy(cfg, objectives.decoder_forward))
    return setups[(dtype, backward)]

  rng = np.random.default_rng(0)
  n_img = a.images
  grids = rng.uniform(-1, 1, (n_img, GRID_HW, GRID_HW, channels)).astype(np.float16)
  fixed = make_captions(n_img, np.full(n_img * 5, a.length, np.int32), v, max_len, rng)
  real = make_captions(n_img, lengths_like_flickr8k(n_img * 5, max_len, rng), v, max_len, rng)
  result["epoch_captions"] = len(real.lengths)
  result["epoch_mean_tokens"] = float(real.lengths.mean())

  def run_loop(setup, objective, feed, steps: int, k: int, compiled: dict):
    """The trainer's loop over `steps` steps from a fresh state: (seconds, compile seconds spent, last loss)."""
    state = jax.block_until_ready(jax.device_put(setup.state))
    compile_s, t0 = 0.0, time.perf_counter()
    for static, args in feed.dispatches(dispatch_chunks(steps, k), mesh):
      key = static
      if key not in compiled:
        c0 = time.perf_counter()
        fn = jax.jit(train_state.make_dispatch(setup, objective, feed.draw(static, mesh), k), donate_argnums=0)
        compiled[key] = fn.lower(state, args).compile()
        compile_s += time.perf_counter() - c0
      state, metrics = compiled[key](state, args)
    jax.block_until_ready(metrics)
    return time.perf_counter() - t0, compile_s, float(metrics["loss"])

  def feed_of(pairs, batch, k, bucket):
    return device_feed.DeviceCaptions(grids, pairs, batch, 0, bucket, max_len, shards=1,
                                      n_devices=jax.device_count(), steps_per_dispatch=k)

  def train_row(dtype, batch, k, backward):
    def run():
      setup, objective = decoder_setup(dtype, backward)
      feed, compiled = feed_of(fixed, batch, k, False), {}
      steps = max(k, a.steps // k * k)
      _, compile_s, _ = run_loop(setup, objective, feed, k, k, compiled)  # one call: compiles the one shape
      secs = [run_loop(setup, objective, feed, steps, k, compiled)[0] for _ in range(a.repeats)]
      med = statistics.median(secs)
      need = needed_train_gflop(batch, a.length - 1, v, width, width, width, channels)
      out = {"captions_per_s": steps * batch / med, "step_ms": 1e3 * med / steps, "compile_s": compile_s,
             "steps": steps, "needed_gflop_per_step": need,
             "needed_share_of_peak": need * 1e9 * steps / med / peak_of(dtype)}
      if k == 1:  # XLA counts a scan's body once, so its count is read for K = 1 only
        cost = next(iter(compiled.values())).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan")))
        out.update(xla_gflop_per_step=flops / 1e9, xla_share_of_peak=flops * steps / med / peak_of(dtype))
      return out
    return run

  if "train" in sections:
    for backward in a.backwards.split(","):
      for dtype in a.dtypes.split(","):
        for batch in map(int, a.batch_sizes.split(",")):
          for k in map(int, a.ks.split(",")):
            runner.row("train", f"decoder train step, B={batch}, {dtype}, K={k}" +
                       ("" if backward == "manual" else f", {backward} backward"), train_row(dtype, batch, k, backward),
                       batch=batch, dtype=dtype, k=k, backward=backward, length=a.length)

  def epoch_row(batch, dtype, k):
    def run():
      setup, objective = decoder_setup(dtype, "manual")
      feed, compiled = feed_of(real, batch, k, True), {}
      spe = feed.steps_per_epoch
      first, compile_s, _ = run_loop(setup, objective, feed, spe, k, compiled)  # every shape compiled
      secs = [run_loop(setup, objective, feed, spe, k, compiled)[0] for _ in range(a.repeats)]
      med = statistics.median(secs)
      return {"epoch_s": med, "epoch_s_min": min(secs), "captions_per_s": spe * batch / med, "steps": spe,
              "compile_s": compile_s, "shapes": len(compiled), "first_epoch_s": first}
    return run

  epoch_runs = [(int(b), d, int(k)) for b, d, k in (r.split(":") for r in a.epoch_runs.split(","))]
  if "epoch" in sections:
    for batch, dtype, k in epoch_runs:
      runner.row("epoch", f"epoch, {len(real.lengths):,} captions, B={batch}, {dtype}, K={k}",
                 epoch_row(batch, dtype, k), batch=batch, dtype=dtype, k=k)

  # -- decoding ----------------------------------------------------------------------------------------------------
  def decode_rows(dtype):
    dec = Decoder(vocab_size=v, mode="attend", embed_dim=width, hidden_dim=width, attention_dim=width, dropout=0.0,
                  deep_output=True, dtype=jnp.dtype(dtype))
    params = dec.init(jax.random.key(0), jnp.zeros((1, GRID_HW, GRID_HW, channels)), jnp.zeros((1, 2), jnp.int32))
    params = params["params"]
    params["out"]["bias"] = params["out"]["bias"].at[2].add(-1e4)  # never <end>: all 20 steps, every call
    params = jax.tree.map(lambda x: x.astype(dtype), params)
    grid = jax.device_put(jnp.asarray(grids[:min(a.decode_images, n_img)], jnp.float32))
    if len(grid) < a.decode_images:
      grid = jnp.tile(grid, (-(-a.decode_images // len(grid)), 1, 1, 1))[:a.decode_images]
    for name, k in (("greedy", 1), ("beam 3", 3), ("beam 5", 5)):
      f = jax.jit(lambda g, k=k: decode.greedy(dec, params, g, 20) if k == 1 else
                  decode.beam_search(dec, params, g, k, 20, 0.0))

      def big(f=f):
        c0 = time.perf_counter()
        f = f.lower(grid).compile()
        compile_s = time.perf_counter() - c0
        r = timeit(lambda: jax.block_until_ready(f(grid)), repeats=a.repeats)
        return {"images_s": r["median_s"], "images_per_s": a.decode_images / r["median_s"], "compile_s": compile_s}

      def one(f=f):
        ones = [grid[i:i + 1] for i in range(a.b1_images)]
        c0 = time.perf_counter()
        f = f.lower(ones[0]).compile()
        compile_s = time.perf_counter() - c0
        r = timeit(lambda: [jax.block_until_ready(f(g)) for g in ones], repeats=a.repeats)
        per = r["median_s"] / a.b1_images
        return {"images_s": per * a.decode_images, "ms_per_image": 1e3 * per, "compile_s": compile_s,
                "measured_images": a.b1_images, "scaled": a.b1_images != a.decode_images}

      runner.row("decode", f"{name}, {a.decode_images} images at batch {a.decode_images}, {dtype}", big,
                 decoder=name, batch=a.decode_images, dtype=dtype)
      runner.row("decode", f"{name}, {a.decode_images} images at batch 1 ({a.b1_images} measured, scaled), {dtype}",
                 one, decoder=name, batch=1, dtype=dtype)

  if "decode" in sections:
    for dtype in a.decode_dtypes.split(","):
      try:
        decode_rows(dtype)
      except Exception as e:  # noqa: BLE001 - the decoder's setup failed: say so and go on
        runner.row("decode", f"decoder setup, {dtype}", lambda e=e: {"error": f"{type(e).__name__}: {e}"[:400]})

  # -- fine-tune ---------------------------------------------------------------------------------------------------
  def finetune_row(batch):
    def run():
      cfg = config("bfloat16", batch=batch)
      cfg.model.encoder, cfg.model.image_size = a.finetune_encoder, a.finetune_image_size
      cfg.train.finetune_from_step = 0  # the encoder's learning rate is on from the first step
      model, variables = train_state.init_model(cfg, v)
      setup = train_state.build(cfg, model, variables, 100_000, trainable=("encoder", "decoder"))
      size = model.encoder.preprocessing.size
      r = np.random.default_rng(1)
      tokens = make_captions(batch, np.full(batch, a.length, np.int32), v, a.length, r).tokens
      batch_arrays = jax.device_put({"image": r.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
                                     "tokens": tokens, "mask": (tokens != 0).astype(np.float32)})
      step = jax.jit(train_state.make_train_step(setup, objectives.cross_entropy(cfg, objectives.image_forward(True))),
                     donate_argnums=0)
      state = jax.device_put(setup.state)
      c0 = time.perf_counter()
      compiled = step.lower(state, batch_arrays).compile()
      compile_s = time.perf_counter() - c0
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      holder = {"s": state}

      def once():
        holder["s"], m = compiled(holder["s"], batch_arrays)
        jax.block_until_ready(m)

      r = timeit(once, repeats=max(a.repeats, 5))
      flops = float(cost.get("flops", float("nan")))
      return {"images_per_s": batch / r["median_s"], "step_ms": 1e3 * r["median_s"], "compile_s": compile_s,
              "xla_gflop_per_step": flops / 1e9, "xla_share_of_peak": flops / r["median_s"] / peak_of("bfloat16"),
              "image_size": size}
    return run

  if "finetune" in sections:
    for batch in map(int, a.finetune_batch_sizes.split(",")):
      runner.row("finetune", f"{a.finetune_encoder} fine-tune step, B={batch}, bfloat16", finetune_row(batch),
                 batch=batch, dtype="bfloat16")

  # -- the PyTorch baseline ----------------------------------------------------------------------------------------
  if "torch" in sections:
    torch_rows(a, runner, result, real, width, channels, v, epoch_runs, sections)
  link_ratios(runner.rows)
  result["rows"] = runner.rows
  result["wall_s"] = time.perf_counter() - t_start
  # The lent GPU machines have no TensorFlow: a run that pulled it in here would fail there.
  result["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" for m in sys.modules)
  if a.markdown:
    with open(a.markdown, "w") as f:
      f.write(markdown(result))
  print(json.dumps(result))


def torch_rows(a, runner: Runner, result: dict, real, width: int, channels: int, v: int, epoch_runs,
               sections: set) -> None:
  """The baseline rows of the jaxcap sections this run has (so a run split in two runs each baseline once)."""
  try:
    import torch

    from bench.torch_sat import DecoderWithAttention, beam_search_one, train_step
  except Exception as e:  # noqa: BLE001 - no torch: the jaxcap rows stand without ratios
    runner.row("torch", "import torch", lambda e=e: {"error": f"{type(e).__name__}: {e}"[:400]})
    return
  cuda = torch.cuda.is_available()
  if cuda:
    # torch_sat.py makes its tensors with no device (as the CPU baseline): the default device moves them all.
    torch.set_default_device("cuda")
    # JAX's default f32 matmul precision on NVIDIA GPUs uses TF32; the baseline gets the same.
    torch.set_float32_matmul_precision("high")
  else:
    torch.set_num_threads(os.cpu_count())
  result["torch"] = {"version": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
                     "float32_matmul_precision": torch.get_float32_matmul_precision()}
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  n = GRID_HW * GRID_HW

  def model(train=True):
    torch.manual_seed(0)
    m = DecoderWithAttention(v, width, width, width, channels)
    return m.train() if train else m.eval()

  def step_fn(m, opt, dtype):
    def go(enc, caps, lengths):
      if dtype == "bfloat16":
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16):
          return train_step(m, opt, enc, caps, lengths)
      return train_step(m, opt, enc, caps, lengths)
    return go

  def train(batch, dtype):
    def run():
      m = model()
      opt = torch.optim.Adam(m.parameters(), lr=4e-4)
      enc = torch.randn(batch, n, channels)
      caps = torch.randint(4, v, (batch, a.length))
      lengths = torch.full((batch,), a.length)
      go = step_fn(m, opt, dtype)
      r = timeit(lambda: (go(enc, caps, lengths), sync()), repeats=max(3, a.repeats), warmup=2)
      return {"captions_per_s": batch / r["median_s"], "step_ms": 1e3 * r["median_s"]}
    return run

  for dtype in a.dtypes.split(",") if "train" in sections else ():
    for batch in map(int, a.batch_sizes.split(",")):
      runner.row("torch", f"torch train step, B={batch}, {dtype}", train(batch, dtype), kind="train", batch=batch,
                 dtype=dtype, length=a.length)

  def epoch(batch, dtype):
    def run():
      m = model()
      opt = torch.optim.Adam(m.parameters(), lr=4e-4)
      go = step_fn(m, opt, dtype)
      order = np.random.default_rng(0).permutation(len(real.lengths))
      steps = len(order) // batch
      enc = torch.randn(batch, n, channels)  # one grid block for every step: the baseline's feed is not timed
      go(enc[:2], torch.randint(4, v, (2, 6)), torch.tensor([6, 5]))  # warm-up
      sync()
      t0 = time.perf_counter()
      for s in range(steps):
        idx = order[s * batch:(s + 1) * batch]
        idx = idx[np.argsort(-real.lengths[idx], kind="stable")]  # sorted by length, as its loader does
        lengths = real.lengths[idx]
        caps = torch.as_tensor(real.tokens[idx, :lengths.max()]).long()
        go(enc, caps, torch.as_tensor(lengths).long())
      sync()
      secs = time.perf_counter() - t0
      return {"epoch_s": secs, "captions_per_s": steps * batch / secs, "steps": steps}
    return run

  for batch, dtype, k in epoch_runs if "epoch" in sections else ():
    runner.row("torch", f"torch epoch, {len(real.lengths):,} captions, B={batch}, {dtype}", epoch(batch, dtype),
               kind="epoch", batch=batch, dtype=dtype)

  def beam(k):
    def run():
      m = model(False)
      with torch.no_grad():
        m.fc.bias[2] -= 1e4  # never <end>, as for jaxcap
      encs = [torch.randn(1, n, channels) for _ in range(a.torch_images)]
      beam_search_one(m, encs[0], k, 1, 2, max_len=19)
      r = timeit(lambda: ([beam_search_one(m, e, k, 1, 2, max_len=19) for e in encs], sync()), repeats=a.repeats,
                 warmup=0)
      per = r["median_s"] / a.torch_images
      return {"images_s": per * a.decode_images, "ms_per_image": 1e3 * per, "measured_images": a.torch_images,
              "scaled": a.torch_images != a.decode_images}
    return run

  for name, k in (("greedy", 1), ("beam 3", 3), ("beam 5", 5)) if "decode" in sections else ():
    runner.row("torch", f"torch {name}, one image at a time ({a.torch_images} measured, scaled to "
               f"{a.decode_images})", beam(k), kind="decode", decoder=name,
               dtype="float32")


def link_ratios(rows: list[dict]) -> None:
  """Each jaxcap row's baseline row and ratio (jaxcap speed / baseline speed)."""
  torch = [r for r in rows if r["section"] == "torch" and "error" not in r and "skipped" not in r]

  def find(**want):
    return next((r for r in torch if all(r.get(k) == x for k, x in want.items())), None)

  for r in rows:
    if "error" in r or "skipped" in r:
      continue
    base, key = None, None
    if r["section"] == "train":
      base, key = find(kind="train", batch=r["batch"], dtype=r["dtype"], length=r["length"]), "captions_per_s"
    elif r["section"] == "epoch":
      base, key = find(kind="epoch", batch=r["batch"], dtype=r["dtype"]), "captions_per_s"
    elif r["section"] == "decode":
      base = find(kind="decode", decoder=r["decoder"])
      if base:
        r["baseline"], r["ratio"] = base["name"], base["images_s"] / r["images_s"]
      continue
    if base and key in base:
      r["baseline"], r["ratio"] = base["name"], r[key] / base[key]


def _cell(r: dict) -> str:
  if "error" in r:
    return "error: " + r["error"].split("\n")[0][:80]
  if "skipped" in r:
    return "skipped (time budget)"
  for key, fmt in (("captions_per_s", "{:,.0f} captions/s"), ("images_per_s", "{:,.0f} images/s"),
                   ("tflops", "{:.1f} TFLOP/s")):
    if key in r:
      text = fmt.format(r[key])
      break
  else:
    text = ""
  if "epoch_s" in r:
    text = f"{r['epoch_s']:.3g} s ({text})"
  if r["section"] in ("decode", "torch") and "images_s" in r:
    text = f"{r['images_s']:.3g} s" + (f" ({r['ms_per_image']:.3g} ms/image)" if "ms_per_image" in r else "")
  if "needed_share_of_peak" in r:
    text += f"; {100 * r['needed_share_of_peak']:.0f}% of peak"
  if "xla_share_of_peak" in r and r["section"] == "finetune":
    text += f"; {100 * r['xla_share_of_peak']:.0f}% of bf16 peak (XLA count)"
  return text


def markdown(result: dict) -> str:
  rows = result["rows"]
  out = [f"Device: {result['device']} (x{result['device_count']}), jax {result['jax']}"
         + (f", torch {result['torch']['version']} on {result['torch']['device']}" if "torch" in result else "")
         + f"; one run of `python -m bench.accelerator`, {result['wall_s']:.0f} s."
         + (" **--small: a smoke run, not figures.**" if result["small"] else ""), "",
         "| section | what | jaxcap | compile | PyTorch baseline | ratio |", "| --- | --- | --- | --- | --- | --- |"]
  by_name = {r["name"]: r for r in rows}
  for r in rows:
    if r["section"] == "torch":
      continue
    base = by_name.get(r.get("baseline", ""))
    compile_s = f"{r['compile_s']:.1f} s" if "compile_s" in r else ""
    out.append(f"| {r['section']} | {r['name']} | {_cell(r)} | {compile_s} | {_cell(base) if base else ''} | "
               f"{r['ratio']:.1f}x |" if "ratio" in r else
               f"| {r['section']} | {r['name']} | {_cell(r)} | {compile_s} | {_cell(base) if base else ''} | |")
  torch_only = [r for r in rows if r["section"] == "torch" and ("error" in r or "skipped" in r)]
  for r in torch_only:
    out.append(f"| torch | {r['name']} | | | {_cell(r)} | |")
  return "\n".join(out) + "\n"


if __name__ == "__main__":
  main()
