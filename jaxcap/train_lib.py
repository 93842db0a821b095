"""Training: train state, jitted train step, data feeding, validation, Orbax checkpoints, metric writing.

`train_and_evaluate(config, workdir)` is the whole job. Running it again on the same workdir resumes from the
latest checkpoint (parameters, optimizer state, step, RNG; the data order is a function of the step, so it
resumes exactly where it stopped). The workdir holds everything inference needs:

  workdir/config.json  vocab.json  metrics.jsonl  tensorboard/  checkpoints/<step>/  best/<step>/

Two regimes: "cached" (frozen encoder; every image encoded once into a feature cache; the decoder trains on
the features: what makes CPU training practical) and "finetune" (images through tf.data, encoder unfrozen from
`train.finetune_from_step` with its own learning rate).
"""
from __future__ import annotations

import json
import math
import os
import queue
import signal
import sys
import threading
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxcap import decode, feature_cache, metrics, pretrained
import jaxcap.data as data_lib
from jaxcap.data import batching, flickr8k, pipeline
from jaxcap.data import vocab as vocab_lib
from jaxcap.models.captioner import Captioner, make_captioner
from jaxcap.models.decoder import Decoder

# Config fields a resumed run must share with its checkpoint (the rest, e.g. num_steps, may change).
MUST_MATCH = ("seed", "data", "model", "train.regime", "train.batch_size")


class TrainError(Exception):
  """A problem the user can fix; the message is one line."""


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------



def split_captions(builder, split: str) -> tuple[list[str], dict[str, list[str]]]:
  """(file names in dataset order, name -> captions) of a prepared split, without decoding images."""
  import tensorflow_datasets as tfds
  ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False)
  names, caps = [], {}
  for ex in ds.as_numpy_iterator():
    name = ex["image/filename"].decode()
    names.append(name)
    caps[name] = [c.decode() for c in ex["captions"]]
  return names, caps


def prefetch(items: Iterator, size: int = 2) -> Iterator:
  """Runs `items` in a background thread, `size` ahead (host batching + device_put overlap the step)."""
  q: queue.Queue = queue.Queue(size)
  done = object()

  def run():
    try:
      for item in items:
        q.put(item)
    except BaseException as e:  # handed to the consumer, raised there
      q.put(e)
    q.put(done)

  threading.Thread(target=run, daemon=True).start()
  while (item := q.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item


# ---------------------------------------------------------------------------------------------------------
# Model, optimizer, state
# ---------------------------------------------------------------------------------------------------------
def weights_path(config) -> str:
  p = config.model.pretrained
  return pretrained.default_path(config.model.encoder) if p == "default" else p


def init_variables(captioner: Captioner, config, rng) -> dict:
  size = captioner.encoder.preprocessing.size
  images = jnp.zeros((1, size, size, 3), jnp.uint8)
  tokens = jnp.zeros((1, 2), jnp.int32)
  variables = jax.jit(captioner.init)(rng, images, tokens)
  variables = jax.tree.map(np.asarray, dict(variables))
  variables.setdefault("batch_stats", {"encoder": {}})
  if config.model.pretrained:
    loaded = pretrained.load(weights_path(config), config.model.encoder)
    for col in ("params", "batch_stats"):
      want = traverse_util.flatten_dict(variables[col]["encoder"]) if variables[col].get("encoder") else {}
      have = traverse_util.flatten_dict(loaded.get(col, {}))
      missing = [k for k in want if k not in have or have[k].shape != want[k].shape]
      if missing:
        raise TrainError(f"{weights_path(config)}: weights do not fit encoder {config.model.encoder!r} "
                         f"(e.g. {'/'.join(missing[0])})")
      if want:  # classifier weights in the file are not part of the encoder and are left out
        variables[col]["encoder"] = traverse_util.unflatten_dict({k: have[k] for k in want})
  return variables


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  t = config.train
  warmup = min(t.warmup_steps, max(total_steps - 1, 1))

  def cosine(peak, steps):
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), peak * t.final_lr_fraction)

  decoder = optax.adamw(cosine(t.learning_rate, total_steps), weight_decay=t.weight_decay, mask=_decay_mask)
  if t.regime == "cached":
    encoder = optax.set_to_zero()
  else:
    start = t.finetune_from_step
    sched = optax.join_schedules([optax.constant_schedule(0.0),
                                  cosine(t.encoder_learning_rate, max(total_steps - start, 1))], [start])
    encoder = optax.adamw(sched, weight_decay=t.weight_decay, mask=_decay_mask)
  labels = lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}  # noqa: E731
  return optax.chain(optax.clip_by_global_norm(t.grad_clip),
                     optax.multi_transform({"encoder": encoder, "decoder": decoder}, labels))


def create_state(variables: dict, tx, seed: int) -> dict:
  params = variables["params"]
  return {"step": np.zeros((), np.int32), "params": params, "batch_stats": variables["batch_stats"],
          "opt_state": tx.init(params), "rng": np.asarray(jax.random.PRNGKey(seed + 1))}


def make_train_step(captioner: Captioner, config, tx, train_encoder: bool) -> Callable:
  """train_step(state, batch) -> (state, metrics); batch: grid or image, tokens [B, T], mask [B, T]."""
  t = config.train
  cached = t.regime == "cached"
  decoder: Decoder = captioner.decoder
  vocab_size = decoder.vocab_size

  def loss_fn(params, batch_stats, batch, rng):
    inputs, targets, mask = batch["tokens"][:, :-1], batch["tokens"][:, 1:], batch["mask"][:, 1:]
    new_stats = batch_stats
    if cached:
      logits, alphas = decoder.apply({"params": params["decoder"]}, batch["grid"], inputs, train=True,
                                     rngs={"dropout": rng})
    else:
      variables = {"params": params, "batch_stats": batch_stats}
      if train_encoder:
        (logits, alphas), upd = captioner.apply(variables, batch["image"], inputs, train=True, train_encoder=True,
                                                rngs={"dropout": rng}, mutable=["batch_stats"])
        new_stats = upd["batch_stats"]
      else:
        logits, alphas = captioner.apply(variables, batch["image"], inputs, train=True, rngs={"dropout": rng})
    labels = jax.nn.one_hot(targets, vocab_size)
    if t.label_smoothing:
      labels = optax.smooth_labels(labels, t.label_smoothing)
    xent = optax.softmax_cross_entropy(logits, labels)
    ntok = jnp.maximum(mask.sum(), 1.0)
    ce = (xent * mask).sum() / ntok
    penalty = jnp.float32(0.0)
    if decoder.mode == "attend" and t.attention_penalty:
      attended = (alphas * mask[:, :, None]).sum(1)                           # [B, N]
      penalty = t.attention_penalty * jnp.mean((1.0 - attended) ** 2)
    return ce + penalty, (ce, penalty, new_stats, ntok)

  def train_step(state, batch):
    rng, step_rng = jax.random.split(state["rng"])
    step_rng = jax.random.fold_in(step_rng, state["step"])
    params = state["params"]
    if cached:  # only the decoder is differentiated; the frozen encoder gets zero updates
      grad_fn = jax.value_and_grad(lambda dp: loss_fn({**params, "decoder": dp}, state["batch_stats"], batch,
                                                      step_rng), has_aux=True)
      (loss, (ce, penalty, stats, ntok)), dgrads = grad_fn(params["decoder"])
      grads = {"encoder": jax.tree.map(jnp.zeros_like, params["encoder"]), "decoder": dgrads}
    else:
      grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
      (loss, (ce, penalty, stats, ntok)), grads = grad_fn(params, state["batch_stats"], batch, step_rng)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {"step": state["step"] + 1, "params": new_params, "batch_stats": stats, "opt_state": opt_state,
                 "rng": rng}
    m = {"loss": loss, "ce": ce, "attention_penalty": penalty, "tokens": ntok,
         "grad_norm": optax.global_norm(grads["decoder"] if cached else grads),
         "param_norm": optax.global_norm(new_params["decoder"])}
    return new_state, m

  return train_step


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------
def host_params(tree):
  """A host copy of (replicated) device arrays, fine in multi-process runs too."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def caption_grids(decoder: Decoder, params, grids: np.ndarray, batch_size: int, max_len: int,
                  vocab: vocab_lib.Vocab) -> list[str]:
  """Greedy captions for cached feature grids [N, h, w, C], in fixed-size batches (one compilation)."""
  out = []
  for i in range(0, len(grids), batch_size):
    g = grids[i:i + batch_size]
    n = len(g)
    tokens, _ = decode.greedy(decoder, params, jnp.asarray(batching.pad_rows(g, batch_size)), max_len)
    out += [vocab.decode(row) for row in np.asarray(tokens)[:n]]
  return out


def caption_images(captioner: Captioner, variables, builder, split: str, batch_size: int, max_len: int,
                   vocab: vocab_lib.Vocab, limit: int = 0) -> tuple[list[str], list[list[str]]]:
  """Greedy captions straight from images (finetune regime), with the references."""
  encode = jax.jit(lambda v, x: captioner.apply(v, x, method=Captioner.encode))
  hyps, refs = [], []
  for batch in pipeline.eval_batches(builder, split=split, batch_size=batch_size,
                                     preprocessing=captioner.encoder.preprocessing):
    grid = encode(variables, batch["image"])
    tokens, _ = decode.greedy(captioner.decoder, variables["params"]["decoder"], grid, max_len)
    k = int(batch["valid"].sum())
    hyps += [vocab.decode(r) for r in np.asarray(tokens)[:k]]
    refs += pipeline.references(batch)
    if limit and len(hyps) >= limit:
      break
  return (hyps[:limit], refs[:limit]) if limit else (hyps, refs)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints and metrics
# ---------------------------------------------------------------------------------------------------------
def _get(config_dict: dict, dotted: str):
  for part in dotted.split("."):
    config_dict = config_dict[part]
  return config_dict


def _first_difference(a, b, prefix: str = "") -> str | None:
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
      if d:
        return d
    return None
  return None if a == b else f"{prefix[:-1]}: checkpoint has {a!r}, config has {b!r}"


def check_compatible(saved: dict, config, workdir: str) -> None:
  current = json.loads(config.to_json())
  for field in MUST_MATCH:
    diff = _first_difference({field: _get(saved, field)}, {field: _get(current, field)})
    if diff:
      raise TrainError(f"{workdir}: the checkpoint comes from an incompatible config ({diff}); "
                       f"use another --workdir or the original config")


class MetricWriter:
  """JSON lines + TensorBoard event files, written by process 0 only."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    values = {k: (float(v) if isinstance(v, (np.floating, np.integer, float, int, jax.Array)) else v)
              for k, v in values.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
    for k, v in values.items():
      if isinstance(v, float) and math.isfinite(v):
        self.tb.add_scalar(k, v, step)
    self.tb.flush()

  def close(self):
    if self.tb:
      self.tb.close()


# ---------------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  t, is_main = config.train, jax.process_index() == 0
  log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if is_main else (lambda *a: None)
  os.makedirs(workdir, exist_ok=True)
  workdir = os.path.abspath(workdir)

  # --- data and vocabulary
  data_dir = data_lib.resolve_data_dir(config.data)
  builder = flickr8k.prepare(data_dir, config.data.tfds_dir or None, verbose=is_main)
  train_names, train_caps = split_captions(builder, "train")
  dev_names, dev_caps = split_captions(builder, "dev")
  vocab = vocab_lib.Vocab.build((c for n in train_names for c in train_caps[n]), config.data.min_count)
  vocab_path = os.path.join(workdir, "vocab.json")
  if os.path.exists(vocab_path) and vocab_lib.Vocab.load(vocab_path) != vocab:
    raise TrainError(f"{vocab_path}: vocabulary does not match the one built from {data_dir} "
                     f"({len(vocab_lib.Vocab.load(vocab_path))} vs {len(vocab)} tokens); the data changed, "
                     f"use a new --workdir")

  # --- model, optimizer, state
  captioner = make_captioner(config.model, len(vocab))
  rng = jax.random.PRNGKey(config.seed)
  variables = init_variables(captioner, config, rng)
  n_dev = len(dev_names) if not t.eval_num_images else min(t.eval_num_images, len(dev_names))

  # --- mesh: one data axis over every device of every process; parameters replicated, batches sharded
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  n_proc, proc = jax.process_count(), jax.process_index()
  if t.batch_size % jax.device_count():
    raise TrainError(f"train.batch_size={t.batch_size} must be divisible by the {jax.device_count()} devices")
  per_proc = t.batch_size // n_proc

  # --- feeding
  cached = t.regime == "cached"
  if t.regime not in ("cached", "finetune"):
    raise TrainError(f"train.regime must be 'cached' or 'finetune', got {t.regime!r}")
  if cached:
    enc_vars = {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}
    weights_id = (os.path.basename(weights_path(config)) + str(os.path.getmtime(weights_path(config)))
                  if config.model.pretrained else f"random-seed{config.seed}")
    weights_id += f"|pixels{pipeline.PIXELS_VERSION}"
    cdir = feature_cache.cache_dir(config.data.feature_cache_dir or os.path.join(data_lib.cache_root(), "features"),
                                   builder.data_dir, config.model.encoder, weights_id,
                                   captioner.encoder.preprocessing.size)
    t0 = time.time()
    names, train_feats = feature_cache.extract(builder, "train", captioner.encoder, enc_vars, cdir,
                                               t.eval_batch_size, verbose=is_main)
    assert names == train_names, "feature cache order differs from the dataset; delete " + cdir
    _, dev_feats = feature_cache.extract(builder, "dev", captioner.encoder, enc_vars, cdir, t.eval_batch_size,
                                         verbose=is_main)
    log(f"features ready in {time.time() - t0:.0f}s: {cdir} train {train_feats.shape}")
    pairs = batching.caption_pairs(train_names, train_caps, vocab, config.data.max_len)
    schedule = batching.Schedule(pairs.lengths, t.batch_size, config.seed, bucket=t.length_bucketing)
    steps_per_epoch = schedule.steps_per_epoch
  else:
    steps_per_epoch = sum(len(train_caps[n]) for n in train_names) // t.batch_size
  total_steps = t.num_steps or t.num_epochs * steps_per_epoch
  if total_steps <= 0:
    raise TrainError("set train.num_steps or train.num_epochs to a positive number")
  tx = make_optimizer(config, total_steps)

  # --- checkpoints: resume if the workdir has one
  ckpt = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                               options=ocp.CheckpointManagerOptions(max_to_keep=t.keep_checkpoints, create=True))
  # Both managers may save at the same step: their multi-process barriers need distinct names.
  best_ckpt = ocp.CheckpointManager(os.path.join(workdir, "best"), options=ocp.CheckpointManagerOptions(
      max_to_keep=1, create=True, best_fn=lambda m: m["bleu4"], best_mode="max",
      multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="best")))
  state = create_state(variables, tx, config.seed)
  start = ckpt.latest_step()
  best_bleu4 = -1.0
  if start is not None:
    meta = ckpt.restore(start, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_compatible(meta["config"], config, workdir)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = ckpt.restore(start, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    best_bleu4 = meta.get("best_bleu4", -1.0)
    log(f"resuming from {workdir}/checkpoints/{start} (step {start} of {total_steps})")
  else:
    start = 0
  state = jax.device_put(state, replicated)
  if is_main:
    vocab.save(vocab_path)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=1))

  def meta_for(step: int, extra: dict | None = None) -> dict:
    return {"step": step, "epoch": step / steps_per_epoch, "examples_seen": step * t.batch_size,
            "config": json.loads(config.to_json()), "vocab": vocab.tokens,
            "preprocessing": captioner.encoder.preprocessing.to_dict(), "best_bleu4": best_bleu4,
            **(extra or {})}

  def save(manager, step, metrics_=None, extra=None):
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta_for(step, extra)))
    manager.save(step, args=args, metrics=metrics_, force=True)

  # --- batches for steps start..total-1 (a pure function of the step: exact resume)
  def to_device(local: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(sharded, v) for k, v in local.items()}

  if cached:
    def batches():
      for step in range(start, total_steps):
        idx = schedule.batch(step)
        length = schedule.padded_length(idx, config.data.max_len)
        idx = idx[proc * per_proc:(proc + 1) * per_proc]
        tokens = pairs.tokens[idx, :length]
        yield to_device({"grid": train_feats[pairs.image_index[idx]], "tokens": tokens,
                         "mask": (tokens != vocab_lib.PAD_ID).astype(np.float32)})
  else:
    def batches():
      it = pipeline.train_batches(builder, vocab, batch_size=per_proc, max_len=config.data.max_len,
                                  preprocessing=captioner.encoder.preprocessing, augment=t.augment,
                                  seed=config.seed, process_index=proc, process_count=n_proc,
                                  skip_examples=start * per_proc)
      for _ in range(start, total_steps):
        yield to_device(next(it))

  # --- validation
  dev_refs = [dev_caps[n] for n in dev_names[:n_dev]]

  def evaluate_split(split: str, params, batch_stats, limit: int = 0) -> dict:
    """Greedy BLEU of real decoded captions (no teacher forcing) on `split`."""
    t0 = time.time()
    if cached:
      if split == "dev":
        grids, refs = dev_feats[:limit or None], dev_refs
      else:
        names, grids = feature_cache.extract(builder, split, captioner.encoder, enc_vars, cdir, t.eval_batch_size,
                                             verbose=is_main)
        caps = split_captions(builder, split)[1]
        refs = [caps[n] for n in names]
      hyps = caption_grids(captioner.decoder, params["decoder"], grids, t.eval_batch_size, t.decode_max_len, vocab)
    else:
      v = {"params": params, "batch_stats": batch_stats}
      hyps, refs = caption_images(captioner, v, builder, split, t.eval_batch_size, t.decode_max_len, vocab, limit)
    scores = metrics.bleu(hyps, refs)
    return {**{f"{split}_{k}": v for k, v in scores.items()}, f"{split}_decode_s": time.time() - t0,
            f"{split}_images": len(hyps), f"{split}_example": hyps[0]}

  def validate(step: int) -> dict:
    return evaluate_split("dev", host_params(state["params"]), host_params(state["batch_stats"]), n_dev)

  # --- the loop
  writer = MetricWriter(workdir, is_main)
  stop = {"signal": None}
  old_handler = signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))  # preemption: save, exit
  steps = {}

  def step_fn(step: int):
    train_encoder = (not cached) and step >= t.finetune_from_step
    if train_encoder not in steps:
      steps[train_encoder] = jax.jit(make_train_step(captioner, config, tx, train_encoder), donate_argnums=0)
    return steps[train_encoder]

  log(f"training {total_steps} steps ({steps_per_epoch} per epoch, batch {t.batch_size}, "
      f"{jax.device_count()} device(s), regime {t.regime}) in {workdir}")
  bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not is_main, smoothing=0.1)
  last = {"time": time.time(), "step": start}
  step_metrics = None
  result = {}
  try:
    for step, batch in zip(range(start, total_steps), prefetch(batches())):
      state, step_metrics = step_fn(step)(state, batch)
      done = step + 1
      is_last = done == total_steps
      if done % t.log_every == 0 or is_last:
        m = jax.device_get(step_metrics)
        if not np.isfinite(m["loss"]):
          raise TrainError(f"loss became {m['loss']} at step {done}; stopped without saving. The last good "
                           f"checkpoint is step {ckpt.latest_step()} in {workdir}/checkpoints "
                           f"(lower train.learning_rate or raise train.grad_clip)")
        now = time.time()
        sps = (done - last["step"]) / max(now - last["time"], 1e-9)
        last.update(time=now, step=done)
        m = {k: float(v) for k, v in m.items()}
        m.update(steps_per_s=sps, captions_per_s=sps * t.batch_size, epoch=done / steps_per_epoch)
        writer.write(done, m)
        bar.set_postfix(loss=f"{m['loss']:.3f}", sps=f"{sps:.2f}")
      if (t.eval_every and done % t.eval_every == 0) or is_last:
        v = validate(done)
        writer.write(done, v)
        log(f"\nstep {done}: dev BLEU-4 {v['dev_bleu4']:.4f} (BLEU-1 {v['dev_bleu1']:.3f}) "
            f"e.g. {v['dev_example']!r}")
        if v["dev_bleu4"] > best_bleu4:
          best_bleu4 = v["dev_bleu4"]
          save(best_ckpt, done, {"bleu4": v["dev_bleu4"]}, {"dev": v})
        result.update(v)
      if (t.checkpoint_every and done % t.checkpoint_every == 0) or is_last or stop["signal"]:
        if not np.isfinite(float(jax.device_get(step_metrics["loss"]))):
          raise TrainError(f"loss became NaN at step {done}; stopped without saving. The last good checkpoint "
                           f"is step {ckpt.latest_step()} in {workdir}/checkpoints")
        save(ckpt, done)
      bar.update(1)
      if stop["signal"]:
        log(f"\nstopped by signal {stop['signal']} at step {done}; checkpoint saved, rerun to resume")
        break
  finally:
    bar.close()
    ckpt.wait_until_finished()
    best_ckpt.wait_until_finished()
    writer.close()
    signal.signal(signal.SIGTERM, old_handler)
  result.update(step=int(jax.device_get(state["step"])), best_dev_bleu4=best_bleu4, total_steps=total_steps)
  best_step = best_ckpt.best_step()
  if t.final_test_eval and best_step is not None and "test" in builder.info.splits and not stop["signal"]:
    # Selected on dev, reported on test: the best-on-dev checkpoint of this workdir.
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, host_params(state))
    best = best_ckpt.restore(best_step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    test = evaluate_split("test", host_params(best["params"]), host_params(best["batch_stats"]))
    final_writer = MetricWriter(workdir, is_main)
    final_writer.write(best_step, {**test, "selected_on": "dev_bleu4"})
    final_writer.close()
    log(f"test BLEU-1..4 of the best-on-dev checkpoint (step {best_step}): " +
        " ".join(f"{test[f'test_bleu{n}']:.4f}" for n in range(1, 5)))
    result.update(test, best_step=best_step)
  return result
