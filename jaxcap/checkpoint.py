"""The on-disk checkpoint format: a workdir's layout, what each checkpoint carries, save, restore and lookup.

    workdir/config.json  vocab.json  metrics.jsonl  tensorboard/
            checkpoints/<step>/{state,meta}   the latest `train.keep_checkpoints` saves (training resumes here)
            best/<step>/{state,meta}          the best by the dev metric `train.select_metric` (inference reads this)

`state` is the train state (an Orbax PyTree save); `meta` (JSON) carries everything inference needs besides
the weights: config, vocabulary, encoder preprocessing, step, and the best dev score so far
(`train.select_metric`). Only this
module knows these names; the trainer writes and the `Captioner` reads through it.
"""
from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp

LATEST, BEST = "checkpoints", "best"
STATE, META = "state", "meta"
# Config fields a resumed run must share with its checkpoint (the rest, e.g. num_steps, may change), and the
# fields inside them that may change anyway because they change speed, not the function or the parameters.
MUST_MATCH = ("seed", "data", "model", "train.regime", "train.batch_size")
MAY_CHANGE = ("model.attention_backward",)
# Fields added after checkpoints were written, with the value that means what those checkpoints did.
ADDED_LATER = {"data.dataset": "flickr8k", "data.karpathy_json": "", "data.use_restval": True}


class CheckpointError(Exception):
  """A checkpoint that cannot be used; the message is one line naming the path and the problem."""


def metadata(step: int, config, vocab, preprocessing, **extra) -> dict:
  """What a checkpoint carries besides the state: enough to caption with it, and to resume compatibly."""
  return {"step": step, "config": json.loads(config.to_json()), "vocab": vocab.tokens,
          "preprocessing": preprocessing.to_dict(), **extra}


def _get(tree: dict, dotted: str):
  for part in dotted.split("."):
    tree = tree[part]
  return tree


def _first_difference(a, b, prefix: str = "") -> str | None:
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
      if d:
        return d
    return None
  return None if a == b else f"{prefix[:-1]}: checkpoint has {a!r}, config has {b!r}"


def with_added_fields(saved_config: dict) -> dict:
  """A saved config with the `ADDED_LATER` fields it lacks filled in."""
  out = json.loads(json.dumps(saved_config))
  for dotted, value in ADDED_LATER.items():
    *parents, leaf = dotted.split(".")
    tree = out
    for p in parents:
      tree = tree.setdefault(p, {})
    tree.setdefault(leaf, value)
  return out


def check_compatible(saved_config: dict, config, workdir: str) -> None:
  current = json.loads(config.to_json())
  saved_config = with_added_fields(saved_config)
  for dotted in MAY_CHANGE:
    for tree in (saved_config, current):
      *path, last = dotted.split(".")
      _get(tree, ".".join(path)).pop(last, None)
  for field in MUST_MATCH:
    diff = _first_difference({field: _get(saved_config, field)}, {field: _get(current, field)})
    if diff:
      raise CheckpointError(f"{workdir}: the checkpoint comes from an incompatible config ({diff}); "
                            f"use another --workdir or the original config")


class Checkpoints:
  """A workdir's two checkpoint managers: the latest saves (resume) and the best one (inference)."""

  def __init__(self, workdir: str, keep: int):
    self.workdir = workdir
    self.latest = ocp.CheckpointManager(os.path.join(workdir, LATEST),
                                        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    # Both managers may save at the same step: their multi-process barriers need distinct names.
    self.best = ocp.CheckpointManager(os.path.join(workdir, BEST), options=ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, best_fn=lambda m: m.get("score", m.get("bleu4")), best_mode="max",
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix="best")))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.best_step()

  def restore_meta(self, step: int) -> dict:
    return self.latest.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]

  def restore_state(self, step: int, like, sharding, best: bool = False):
    """The state saved at `step`, restored against `like` (arrays or ShapeDtypeStructs of the same tree)
    straight into `sharding` (every process reads its own shards; no host copy to redistribute)."""
    abstract = _abstract(like, sharding)
    manager = self.best if best else self.latest
    return manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))[STATE]

  def save(self, step: int, state, meta: dict) -> None:
    self.latest.save(step, args=_save_args(state, meta), force=True)

  def save_best(self, step: int, state, meta: dict, score: float) -> None:
    self.best.save(step, args=_save_args(state, meta), metrics={"score": score}, force=True)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()


def _abstract(tree, sharding):
  import jax
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _save_args(state, meta: dict):
  return ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)})


def find(path: str) -> tuple[str, int]:
  """(manager directory, step) for inference: a workdir's best checkpoint, else its latest; or a step dir."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: checkpoint directory does not exist (train one with `python train.py`)")
  for sub in (BEST, LATEST):
    d = os.path.join(path, sub)
    if os.path.isdir(d):
      step = ocp.CheckpointManager(d).latest_step()
      if step is not None:
        return d, step
  parent, name = os.path.split(path.rstrip("/"))
  if name.isdigit() and os.path.isdir(os.path.join(path, STATE)):
    return parent, int(name)
  raise CheckpointError(f"{path}: no jaxcap checkpoint found (expected {BEST}/ or {LATEST}/ of a workdir, "
                        f"or a step directory)")


def load(path: str) -> tuple[dict, dict, str]:
  """(state as saved, meta, "<manager dir>/<step>") of the checkpoint `find(path)` picks."""
  directory, step = find(path)
  try:
    restored = ocp.CheckpointManager(directory).restore(
        step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(), META: ocp.args.JsonRestore()}))
  except Exception as e:  # Orbax raises many types for damaged or foreign directories
    raise CheckpointError(f"{directory}/{step}: cannot read checkpoint ({type(e).__name__}: {e})") from None
  return restored[STATE], restored[META], f"{directory}/{step}"
