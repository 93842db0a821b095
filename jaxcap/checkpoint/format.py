"""The on-disk checkpoint format: a workdir's layout, what each checkpoint carries, reading one, finding the
ones a path names (best on dev first), and reading the configs older checkpoints saved.

    workdir/config.json  vocab.json  metrics.jsonl  tensorboard/
            checkpoints/<step>/{state,meta,metrics}   the latest `train.keep_checkpoints` saves, plus the best one
                                                      by the dev metric train.select_metric (training
                                                      resumes from the newest,
                                                      inference reads the best)
            damaged/<step>-<time>/                    checkpoints that failed to restore, moved aside, never deleted
            train.lock                                held by the trainer writing here (host, pid inside)
            best/<step>/                              the best saves of the older two-directory layout: read as
                                                      best candidates

`state` is the train state (an Orbax PyTree save); `meta` (JSON) carries everything inference needs besides
the weights: config, vocabulary, encoder preprocessing, step, the best dev score so far. `metrics` (Orbax's)
holds {"score": the dev train.select_metric, BLEU-4 by default} on the saves whose dev evaluation was a new
best, and only on those (older saves hold {"bleu4": ...}, read the same).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxcap.checkpoint.errors import CheckpointError, describe

LATEST, LEGACY_BEST, DAMAGED, LOCK = "checkpoints", "best", "damaged", "train.lock"
STATE, META = "state", "meta"
SCORE, LEGACY_SCORE = "score", "bleu4"  # the Orbax metric that marks a new best on dev (train.select_metric)
TMP_MARK = ".orbax-checkpoint-tmp"
# Config fields a resumed run must share with its checkpoint (the rest, e.g. num_steps, may change), and the
# fields inside them that may change anyway because they change speed, not the function or the parameters.
MUST_MATCH = ("seed", "data", "model", "train.regime", "train.batch_size")
MAY_CHANGE = ("model.attention_backward",)
# Fields added after checkpoints were written, with the value that means what those checkpoints did.
ADDED_LATER = {"data.dataset": "flickr8k", "data.karpathy_json": "", "data.use_restval": True}
# Values renamed after checkpoints were written, old -> current: saved configs before the rename say "auto"
# for the hand-written attention backward.
RENAMED = {"model.attention_backward": {"auto": "manual"}}


def metadata(step: int, config, vocab, preprocessing, **extra) -> dict:
  """What a checkpoint carries besides the state: enough to caption with it, and to resume compatibly."""
  return {"step": step, "config": json.loads(config.to_json()), "vocab": vocab.tokens,
          "preprocessing": preprocessing.to_dict(), **extra}


# ---------------------------------------------------------------------------------------------------------
# Saved configs
# ---------------------------------------------------------------------------------------------------------
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
  """A saved config as the current code reads it: the `ADDED_LATER` fields it lacks filled in, and the
  `RENAMED` values it holds replaced."""
  out = json.loads(json.dumps(saved_config))
  for dotted, value in ADDED_LATER.items():
    *parents, leaf = dotted.split(".")
    tree = out
    for p in parents:
      tree = tree.setdefault(p, {})
    tree.setdefault(leaf, value)
  for dotted, renames in RENAMED.items():
    *parents, leaf = dotted.split(".")
    tree = out
    for p in parents:
      tree = tree.get(p, {})
    if tree.get(leaf) in renames:
      tree[leaf] = renames[tree[leaf]]
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


# ---------------------------------------------------------------------------------------------------------
# Reading one checkpoint
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Ref:
  """One checkpoint on disk: <directory>/<step>, with its dev score when it was saved as a new best."""
  directory: str
  step: int
  score: float | None = None

  @property
  def path(self) -> str:
    return os.path.join(self.directory, str(self.step))


def abstract(tree, sharding=None):
  """ShapeDtypeStructs of `tree`, placed in `sharding` when given (restored straight into it)."""
  if sharding is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def as_saved(ref: Ref):
  """ShapeDtypeStructs of the state as saved, on this process's first device: the devices a checkpoint's
  sharding names (those of the job that wrote it) need not be this process's."""
  saved = ocp.StandardCheckpointHandler().metadata(epath.Path(ref.path) / STATE).tree
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)


def read(ref: Ref, like=None, items=(STATE, META), sharding=None) -> dict:
  """The items of one checkpoint (state restored against `like`, or as saved onto this process's first device).
  Raises whatever Orbax raises."""
  args = {STATE: ocp.args.StandardRestore(abstract(like, sharding) if like is not None else
                                          as_saved(ref) if STATE in items else None),
          META: ocp.args.JsonRestore()}
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    out = checkpointer.restore(ref.path, args=ocp.args.Composite(**{k: args[k] for k in items}))
  finally:
    checkpointer.close()
  if META in items and not isinstance(out[META], dict):
    raise ValueError(f"{META} is not a JSON object")
  return out


def saved_metrics(path: str) -> dict | None:
  """The Orbax metrics of a step dir (None when it has none or they cannot be read)."""
  try:
    with open(os.path.join(path, "metrics", "metrics")) as f:
      m = json.load(f)
    if isinstance(m, dict) and SCORE not in m and LEGACY_SCORE in m:
      m = {SCORE: m[LEGACY_SCORE]}
    return m if isinstance(m, dict) and isinstance(m.get(SCORE), (int, float)) else None
  except (OSError, ValueError):
    return None


def committed_steps(directory: str) -> list[int]:
  """Steps with a committed save in `directory`: dirs named by their step (an unfinished one carries Orbax's
  tmp suffix)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


# ---------------------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------------------
def refs(directory: str) -> list[Ref]:
  return [Ref(directory, s, (saved_metrics(os.path.join(directory, str(s))) or {}).get(SCORE))
          for s in committed_steps(directory)]


def ranked(workdir: str) -> list[Ref]:
  """A workdir's checkpoints in the order inference should try them: the saves marked best on dev, highest
  dev score first (a workdir of the older layout also has best/), then the rest, newest first."""
  all_refs = refs(os.path.join(workdir, LATEST)) + refs(os.path.join(workdir, LEGACY_BEST))
  best = sorted((r for r in all_refs if r.score is not None), key=lambda r: (-r.score, r.step))
  rest = sorted((r for r in all_refs if r.score is None), key=lambda r: -r.step)
  return best + rest


def best(workdir: str) -> Ref | None:
  """The best-on-dev checkpoint of a workdir, as recorded on disk (None before any dev evaluation)."""
  marked = [r for r in ranked(workdir) if r.score is not None]
  return marked[0] if marked else None


def find(path: str) -> list[Ref]:
  """The checkpoints `path` names, best first: a workdir's (see `ranked`), or one step directory."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: checkpoint directory does not exist (train one with `python train.py`)")
  parent, name = os.path.split(path.rstrip("/"))
  if name.isdigit() and os.path.isdir(os.path.join(path, STATE)):
    return [Ref(parent, int(name), (saved_metrics(path) or {}).get(SCORE))]
  found = ranked(path)
  if not found:
    raise CheckpointError(f"{path}: no jaxcap checkpoint found (expected {LATEST}/ of a workdir, or a step "
                          f"directory)")
  return found


def workdir_of(step_path: str) -> str | None:
  """The workdir a checkpoint "<workdir>/checkpoints/<step>" (or best/<step>) belongs to, where files that go
  with its model but not in a save live (e.g. `jaxcap.consensus`'s index); None for a step directory outside
  that layout (its parent may hold other models)."""
  parent = os.path.dirname(os.path.abspath(step_path.rstrip("/")))
  return os.path.dirname(parent) if os.path.basename(parent) in (LATEST, LEGACY_BEST) else None


def load(path: str, warn: Callable[[str], None] = lambda s: None) -> tuple[dict, dict, str]:
  """(state as saved, meta, "<directory>/<step>") of the best checkpoint `path` names that can be read. One
  that cannot is reported through `warn` in one line (naming it and the reason) and the next is tried; the
  files are left where they are (a reader does not rearrange a workdir a trainer may be writing)."""
  candidates = find(path)
  failures = []
  for i, ref in enumerate(candidates):
    try:
      out = read(ref)
    except Exception as e:  # Orbax and TensorStore raise many types for damaged files
      failures.append(f"{ref.path}: {describe(e)}")
      nxt = candidates[i + 1].path if i + 1 < len(candidates) else None
      warn(f"warning: checkpoint {ref.path} cannot be read ({describe(e)})" +
           (f"; using {nxt} instead" if nxt else ""))
      continue
    return out[STATE], out[META], ref.path
  raise CheckpointError(f"no checkpoint in {path} can be read ({failures[0]}); retrain with `python train.py` "
                        f"(a rerun resumes from the newest checkpoint that restores) or point at another "
                        f"checkpoint")
