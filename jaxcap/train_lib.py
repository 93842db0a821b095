"""The training loop: mesh, the jitted steps a feed asks for, intervals (log, validate, save), preemption,
metric writing. It never asks how batches are made: that is the feed's business (`jaxcap.feeds`).

`train_and_evaluate(config, workdir)` is the whole job. Running it again on the same workdir resumes from the
latest checkpoint (parameters, optimizer state, step, RNG; the data order is a function of the step, so it
resumes exactly where it stopped). The workdir's layout is `jaxcap.checkpoint`'s.
"""
from __future__ import annotations

import collections
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcap import checkpoint, config_check, evaluator, feeds, fileio, metrics, objectives, train_state
from jaxcap.data import dataset, tfds_builder
from jaxcap.data import vocab as vocab_lib
from jaxcap.feeds.host import chunks
from jaxcap.metric_writer import MetricWriter, Progress
from jaxcap.preemption import Preemption
from jaxcap.train_state import TrainError

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


def load_data(config, workdir: str, verbose: bool):
  """(builder, vocab, (train names, captions), (dev names, captions)); the vocabulary is built from the train
  split and must match the one a resumed workdir holds."""
  builder = dataset.prepare(config.data, verbose=verbose)
  train = tfds_builder.split_captions(builder, "train")
  dev = tfds_builder.split_captions(builder, "dev")
  config_check.check_data(config, train, dev)
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


def validate(feed, model, params, batch_stats, split: str, config, vocab, mesh: Mesh, limit: int = 0) -> dict:
  """Greedy BLEU-1..4 and CIDEr-D of real decoded captions (no teacher forcing) on `split`, through the one
  evaluator: the variables placed on `mesh` (replicated) once, for the feed's inputs and every batch (the train
  state's are there already), the batches split over its `data` axis, each process decoding its share of the
  images; every process returns the same figures."""
  t0 = time.time()
  variables = jax.device_put({"params": params, "batch_stats": batch_stats}, NamedSharding(mesh, P()))
  inputs = feed.eval_inputs(split, variables, limit)
  settings = evaluator.Settings(1, config.train.decode_max_len, 0.0, config.train.eval_batch_size)
  ev = evaluator.evaluate(model.decoder, variables["params"]["decoder"], inputs, settings, vocab,
                          metrics.bleu_and_cider, mesh=mesh)
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
  mesh = objectives.data_mesh()
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
      compiled[key] = train_state.jit_dispatch(setup, key[0], feed.draw(static, mesh), n)
    return compiled[key]

  log(f"training {total_steps} steps ({feed.steps_per_epoch} per epoch, batch {t.batch_size}, "
      f"{jax.device_count()} device(s), regime {t.regime}, {t.steps_per_dispatch} per dispatch) in {workdir}")
  writer, preemption, result = MetricWriter(workdir, is_main, start), Preemption(log), last_dev
  in_flight = InFlight()  # bounds the batches that dispatched-but-unrun steps hold in host memory
  progress = Progress(writer, start, total_steps, t.batch_size, is_main)
  plan = chunks(start, total_steps, t.steps_per_dispatch, feed.objective)
  inputs = iter(feed.dispatches(plan, mesh))
  try:
    for first, n in plan:
      with jax.transfer_guard_host_to_device(t.transfer_guard if first > start else "allow"):
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
        v = validate(feed, model, state["params"], state["batch_stats"], "dev", config, vocab, mesh, n_dev)
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
  test = validate(feed, model, best["params"], best["batch_stats"], "test", config, vocab, sharding.mesh)
  writer = MetricWriter(workdir, is_main)
  selected = f"dev_{config.train.select_metric}"
  writer.write(ref.step, {**test, "selected_on": selected})
  writer.close()
  log(f"test BLEU-1..4 of the best-on-dev checkpoint (step {ref.step}): " +
      " ".join(f"{test[f'test_bleu{n}']:.4f}" for n in range(1, 5)))
  return {**test, "best_step": ref.step, f"best_{selected}": ref.score}
