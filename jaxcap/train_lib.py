"""The training loop: mesh, the jitted steps a feed asks for, intervals (log, validate, save), preemption,
metric writing. It never asks how batches are made: that is the feed's business (`jaxcap.feeds`).

`train_and_evaluate(config, workdir)` is the whole job. Running it again on the same workdir resumes from the
latest checkpoint (parameters, optimizer state, step, RNG; the data order is a function of the step, so it
resumes exactly where it stopped). The workdir's layout is `jaxcap.checkpoint`'s.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxcap import fileio
from jaxcap import checkpoint, config_check, evaluator, feeds, metrics, train_state
from jaxcap.data import dataset, tfds_builder
from jaxcap.data import vocab as vocab_lib
from jaxcap.feeds import prefetch  # noqa: F401  (bench scripts use it from here)
from jaxcap.train_state import TrainError  # noqa: F401  (the trainer's user-fixable error)

# The host-to-device transfer guard (a `jax.transfer_guard_host_to_device` level) every dispatch after the first
# runs under, fetching its inputs included. Tests set "disallow_explicit": the device-resident feed copies
# nothing per step, so it passes; a host-fed step copies its batch, so it fails.
STEADY_STATE_TRANSFER_GUARD = "allow"


class InFlight:
  """Bounds how many dispatched steps may wait to run: `add(x)` blocks on the step `depth` adds ago.

  JAX dispatches asynchronously, so without it the loop runs ahead of the device, and every step queued holds
  its batch in host memory (up to `log_every` of them: 400 MB of 7x7x1280 batches of 64). Two in flight keep
  the device as busy as any number would."""

  def __init__(self, depth: int = 2):
    self.depth, self.queue = depth, collections.deque()

  def add(self, x) -> None:
    self.queue.append(x)
    if len(self.queue) > self.depth:
      jax.block_until_ready(self.queue.popleft())


def steady_host_memory() -> None:
  """glibc only: a fixed 1 MB mmap threshold. Each step's batch arrays (MBs, made in the prefetch thread and
  freed in the main one) are then mapped and unmapped, instead of raising glibc's dynamic threshold and
  fragmenting its per-thread arenas, which holds a few hundred MB more RSS for nothing (bench/feature_store.py)."""
  import ctypes
  import platform
  if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    try:
      ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
      pass


def host_params(tree):
  """A host copy of (replicated) device arrays, fine in multi-process runs too."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


class Preemption:
  """SIGTERM or Ctrl-C (SIGINT) asks the run to save and stop at a step every process agrees on; a second
  Ctrl-C exits at once without saving (the last checkpoint stays as it was).

  One process: a signal handler sets a flag. Several: JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM in whichever processes get it and agrees on one sync step
  for all of them, so every process enters the collective save at the same step (a local flag would let
  some enter it alone and hang); no Python SIGTERM handler is installed there, and Ctrl-C is turned into a
  SIGTERM to this process for the service to handle.
  """

  def __init__(self, log=lambda *a: None):
    self.signal, self.log, self._old, self._interrupted = None, log, {}, False
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be installed from the main thread
    if jax.process_count() == 1:
      self._old[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._request)
    self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)

  def _request(self, signum, frame):
    self.signal = int(signum)

  def _interrupt(self, signum, frame):
    if self._interrupted:
      os.write(2, b"\ninterrupted again: exiting now without saving\n")
      os._exit(130)
    self._interrupted = True
    self.log("\ninterrupted: saving a checkpoint at the next step, then stopping (Ctrl-C again to exit at once)")
    if jax.process_count() == 1:
      self.signal = int(signum)
    else:
      os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signal is not None
    from jax.experimental import multihost_utils
    if not self.signal and multihost_utils.reached_preemption_sync_point(step):
      self.signal = int(signal.SIGINT if self._interrupted else signal.SIGTERM)
    return bool(self.signal)

  def close(self):
    for signum, old in self._old.items():
      signal.signal(signum, old)
    self._old = {}


class MetricWriter:
  """JSON lines + TensorBoard event files, written by process 0 only.

  `resume_step`: the step training resumes from. Records past it (steps a killed run logged after its last
  save, which the resumed run replays) and the previous final test records are dropped from metrics.jsonl,
  and TensorBoard is told to purge its events past it, so every step appears once.
  """

  def __init__(self, workdir: str, enabled: bool, resume_step: int | None = None):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      resumed = resume_step is not None and os.path.exists(self.path)
      if resumed:
        self._truncate(resume_step)
      purge = resume_step + 1 if resumed else None
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)

  def _truncate(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except ValueError:  # a line cut by a kill
          continue
        if isinstance(r, dict) and r.get("step", 0) <= step and "selected_on" not in r:
          keep.append(line if line.endswith("\n") else line + "\n")
    try:
      with open(self.path + ".tmp", "w") as f:
        f.writelines(keep)
      os.replace(self.path + ".tmp", self.path)
    except OSError as e:
      raise TrainError(f"{self.path}: cannot rewrite the metrics ({e.strerror})") from None

  def write(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    values = {k: (float(v) if isinstance(v, (np.floating, np.integer, float, int, jax.Array)) else v)
              for k, v in values.items()}
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
    except OSError as e:
      raise TrainError(f"{self.path}: cannot write the metrics ({e.strerror}); the checkpoints are intact, "
                       f"fix it and rerun to resume") from None
    for k, v in values.items():
      if isinstance(v, float) and math.isfinite(v):
        self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def close(self):
    if self.tb:
      with contextlib.suppress(OSError):  # a last flush on a full disk: the error that stopped the run says why
        self.tb.close()


class Progress:
  """The progress bar and the logged training metrics (steps/s measured between log points)."""

  def __init__(self, writer: MetricWriter, start: int, total_steps: int, batch_size: int, enabled: bool):
    self.writer, self.batch_size, self.last = writer, batch_size, (time.time(), start)
    self.bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not enabled,
                    smoothing=0.1)

  def log(self, step: int, m: dict, steps_per_epoch: int) -> None:
    now = time.time()
    sps = (step - self.last[1]) / max(now - self.last[0], 1e-9)
    self.last = (now, step)
    self.writer.write(step, {**m, "steps_per_s": sps, "captions_per_s": sps * self.batch_size,
                             "epoch": step / steps_per_epoch})
    self.bar.set_postfix(loss=f"{m['loss']:.3f}", sps=f"{sps:.2f}")


def load_data(config, workdir: str, verbose: bool):
  """(builder, vocab, (train names, captions), (dev names, captions)); the vocabulary is built from the train
  split and must match the one a resumed workdir holds."""
  builder = dataset.prepare(config.data, verbose=verbose)
  train = tfds_builder.split_captions(builder, "train")
  dev = tfds_builder.split_captions(builder, "dev")
  vocab = vocab_lib.Vocab.build((c for n in train[0] for c in train[1][n]), config.data.min_count)
  vocab_path = os.path.join(workdir, "vocab.json")
  if os.path.exists(vocab_path) and vocab_lib.Vocab.load(vocab_path) != vocab:
    raise TrainError(f"{vocab_path}: vocabulary does not match the one built from {dataset.describe(config.data)} "
                     f"({len(vocab_lib.Vocab.load(vocab_path))} vs {len(vocab)} tokens); the data changed, "
                     f"use a new --workdir")
  return builder, vocab, train, dev


def restore(ckpts: checkpoint.Checkpoints, state: dict, sharding, config, total_steps: int,
            log) -> tuple[dict, int, float, dict]:
  """(state, first step, best dev score so far, the restored save's dev metrics): the newest checkpoint that
  restores (damaged newer ones are moved aside, one line each), else the fresh state's; placed in `sharding`
  either way (restored straight into it: every process reads its own shards). The best is what the saves on
  disk record."""
  found = ckpts.restore_latest(state, config, sharding)
  if found is None:
    return jax.device_put(state, sharding), 0, -1.0, {}
  restored, meta = found
  start = int(meta["step"])
  log(f"resuming from {ckpts.directory}/{start} (step {start} of {total_steps})")
  best = ckpts.best()
  return restored, start, best.score if best else -1.0, dict(meta.get("dev") or {})


def validate(feed, model, state_params, batch_stats, split: str, config, vocab, limit: int = 0) -> dict:
  """Greedy BLEU-1..4 and CIDEr-D of real decoded captions (no teacher forcing) on `split`, through the one
  evaluator."""
  t0 = time.time()
  inputs = feed.eval_inputs(split, {"params": state_params, "batch_stats": batch_stats}, limit)
  settings = evaluator.Settings(1, config.train.decode_max_len, 0.0, config.train.eval_batch_size)
  ev = evaluator.evaluate(model.decoder, state_params["decoder"], inputs, settings, vocab, metrics.bleu_and_cider)
  return {**{f"{split}_{k}": v for k, v in ev.metrics.items()}, f"{split}_decode_s": time.time() - t0,
          f"{split}_images": len(ev.captions), f"{split}_example": ev.captions[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole job: the config is checked before any work, and the workdir is locked for one trainer."""
  config_check.check(config, jax.device_count())
  steady_host_memory()
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise TrainError(f"{workdir}: cannot create the workdir ({e.strerror})") from None
  log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if jax.process_index() == 0 else (lambda *a: None)
  with checkpoint.locked(workdir, log):
    return _train_and_evaluate(config, workdir, log)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, log) -> dict:
  t, is_main = config.train, jax.process_index() == 0
  builder, vocab, train, dev = load_data(config, workdir, is_main)
  model, variables = train_state.init_model(config, len(vocab), vocab.tokens)
  # One data axis over every device of every process; parameters replicated, batches sharded (by the feed).
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  feed = feeds.make_feed(config, builder, model, variables, vocab, train, dev, log, is_main)
  total_steps = t.num_steps or t.num_epochs * feed.steps_per_epoch
  if total_steps <= 0:
    raise TrainError(f"train.num_epochs={t.num_epochs} of {feed.steps_per_epoch} steps each is no training; set "
                     f"train.num_steps or train.num_epochs to a positive number")
  setup = train_state.build(config, model, variables, total_steps, feed.trainable)
  ckpts = checkpoint.Checkpoints(workdir, t.keep_checkpoints, log, is_main)
  state, start, best, last_dev = restore(ckpts, setup.state, replicated, config, total_steps, log)
  if is_main:
    write_text(os.path.join(workdir, "vocab.json"), vocab.to_json())
    write_text(os.path.join(workdir, "config.json"), config.to_json(indent=1))
  n_dev = min(t.eval_num_images or len(dev[0]), len(dev[0]))
  selected = f"dev_{t.select_metric}"  # the checkpoint marked best is the best by this

  def meta(step: int, **extra) -> dict:
    return checkpoint.metadata(step, config, vocab, model.encoder.preprocessing, best_score=best,
                               epoch=step / feed.steps_per_epoch, examples_seen=step * t.batch_size, **extra)

  compiled = {}  # one jitted call per (objective, steps in it, the feed's static part of its inputs)

  def dispatch_fn(first: int, n: int, static):
    key = (feed.objective(first), n, static)
    if key not in compiled:
      compiled[key] = jax.jit(train_state.make_dispatch(setup, key[0], feed.draw(static, mesh), n),
                              donate_argnums=0)
    return compiled[key]

  log(f"training {total_steps} steps ({feed.steps_per_epoch} per epoch, batch {t.batch_size}, "
      f"{jax.device_count()} device(s), regime {t.regime}, {t.steps_per_dispatch} per dispatch) in {workdir}")
  writer, preemption, result = MetricWriter(workdir, is_main, start), Preemption(log), last_dev
  in_flight = InFlight()  # bounds the batches that dispatched-but-unrun steps hold in host memory
  progress = Progress(writer, start, total_steps, t.batch_size, is_main)
  plan = feeds.chunks(start, total_steps, t.steps_per_dispatch, feed.objective)
  inputs = iter(feed.dispatches(plan, mesh))
  try:
    for first, n in plan:
      with jax.transfer_guard_host_to_device(STEADY_STATE_TRANSFER_GUARD if first > start else "allow"):
        static, args = next(inputs)
        state, step_metrics = dispatch_fn(first, n, static)(state, args)
      in_flight.add(step_metrics["loss"])
      done = first + n
      ckpts.poll()  # a failed background save stops the run here
      is_last, stop, v = done == total_steps, preemption.reached(done), None
      if done % t.log_every == 0 or is_last:
        m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        check_finite(m["loss"], done, ckpts)
        progress.log(done, m, feed.steps_per_epoch)
      if (t.eval_every and done % t.eval_every == 0) or is_last:
        v = validate(feed, model, host_params(state["params"]), host_params(state["batch_stats"]), "dev", config,
                     vocab, n_dev)
        writer.write(done, v)
        log(f"\nstep {done}: dev BLEU-4 {v['dev_bleu4']:.4f} (BLEU-1 {v['dev_bleu1']:.3f}, CIDEr-D "
            f"{v['dev_cider']:.3f}) e.g. {v['dev_example']!r}")
        result.update(v)
      new_best = v is not None and v[selected] > best
      best = v[selected] if new_best else best
      if (t.checkpoint_every and done % t.checkpoint_every == 0) or is_last or stop or new_best:
        check_finite(float(jax.device_get(step_metrics["loss"])), done, ckpts)
        ckpts.save(done, state, meta(done, **({"dev": v} if v else {})), score=best if new_best else None)
      progress.bar.update(n)
      if stop:
        log(f"\nstopped by signal {preemption.signal} at step {done}; checkpoint saved, rerun to resume")
        break
  except BaseException:
    ckpts.close(quiet=True)  # the save in flight completes; its own failure would hide this error
    raise
  finally:
    progress.bar.close()
    writer.close()
    preemption.close()
  ckpts.close()  # the last save is on disk, or one line says why not
  result.update(step=int(jax.device_get(state["step"])), total_steps=total_steps, **best_on_disk(ckpts, selected))
  if t.final_test_eval and "best_step" in result and "test" in builder.info.splits and not preemption.signal:
    result.update(final_test(feed, model, ckpts, state, replicated, config, vocab, workdir, is_main, log))
  return result


def write_text(path: str, text: str) -> None:
  """Writes `text` whole or not at all (tmp file, then rename); a failure (disk full, permissions) is one line."""
  try:
    fileio.write_atomic(path, text)
  except OSError as e:
    raise TrainError(f"{path}: cannot write ({e.strerror})") from None


def best_on_disk(ckpts: checkpoint.Checkpoints, selected: str) -> dict:
  best = ckpts.best()
  return {f"best_{selected}": best.score, "best_step": best.step} if best else {f"best_{selected}": -1.0}


def check_finite(loss: float, step: int, ckpts: checkpoint.Checkpoints) -> None:
  if not np.isfinite(loss):
    raise TrainError(f"loss became {loss} at step {step}; stopped without saving. The last good checkpoint is "
                     f"step {ckpts.latest_step()} in {ckpts.directory} "
                     f"(lower train.learning_rate or raise train.grad_clip)")


def final_test(feed, model, ckpts, like_state, sharding, config, vocab, workdir: str, is_main: bool, log) -> dict:
  """Selected on dev, reported on test: greedy BLEU of the workdir's best-on-dev checkpoint (if it cannot be
  restored, the next best on dev, with one line saying so)."""
  found = ckpts.restore_best(like_state, sharding)
  if found is None:
    return {}
  ref, best = found
  test = validate(feed, model, host_params(best["params"]), host_params(best["batch_stats"]), "test", config, vocab)
  writer = MetricWriter(workdir, is_main)
  selected = f"dev_{config.train.select_metric}"
  writer.write(ref.step, {**test, "selected_on": selected})
  writer.close()
  log(f"test BLEU-1..4 of the best-on-dev checkpoint (step {ref.step}): " +
      " ".join(f"{test[f'test_bleu{n}']:.4f}" for n in range(1, 5)))
  return {**test, "best_step": ref.step, f"best_{selected}": ref.score}
