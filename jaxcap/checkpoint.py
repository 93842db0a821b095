"""The on-disk checkpoint format and its save protocol: a workdir's layout, what each checkpoint carries, save,
restore, the best-on-dev lookup, damage, and the one-trainer-per-workdir lock.

    workdir/config.json  vocab.json  metrics.jsonl  tensorboard/
            checkpoints/<step>/{state,meta,metrics}   the latest `train.keep_checkpoints` saves, plus the best one
                                                      by the dev metric train.select_metric (training
                                                      resumes from the newest,
                                                      inference reads the best)
            damaged/<step>-<time>/                    checkpoints that failed to restore, moved aside, never deleted
            train.lock                                held by the trainer writing here (host, pid inside)
            best/<step>/                              only in workdirs written before the single-manager layout:
                                                      still read as a best candidate

`state` is the train state (an Orbax PyTree save); `meta` (JSON) carries everything inference needs besides
the weights: config, vocabulary, encoder preprocessing, step, the best dev score so far. `metrics` (Orbax's)
holds {"score": the dev train.select_metric, BLEU-4 by default} on the saves whose dev evaluation was a new
best, and only on those (saves written before select_metric existed hold {"bleu4": ...}, read the same).

The save protocol. Every save is one Orbax commit (a tmp dir written, then renamed) of one manager, whose
preservation policy keeps the latest N saves and the best save by that dev score. A save that is the latest and the
best is one directory: there is no second commit a kill could separate from the first. The best is what is on
disk, never a number carried along: on resume it is read back from the saves' metrics. A kill mid-save leaves
a `<step>.orbax-checkpoint-tmp-*` dir, which the next trainer removes (one line). Only this module knows these
names; the trainer writes and the `Captioner` reads through it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import logging as py_logging
import os
import shutil
import signal
import socket
import time
from typing import Callable

import orbax.checkpoint as ocp

from jaxcap import fileio
from jaxcap import paths

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


class CheckpointError(Exception):
  """A checkpoint or workdir that cannot be used; the message is one line naming the path and the problem."""


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


# ---------------------------------------------------------------------------------------------------------
# Errors in one line
# ---------------------------------------------------------------------------------------------------------
def describe(e: BaseException) -> str:
  """One line for an exception from Orbax, TensorStore or the OS: the cause a user can act on when there is
  one (disk full, permissions), else the first line of the message."""
  return cause_and_fix(e)[0]


def cause_and_fix(e: BaseException) -> tuple[str, str]:
  known = paths.io_cause(e)
  if known:
    return known
  first = (str(e).strip().splitlines() or [""])[0]
  first = first.split(" See full TensorStore details")[0]  # then a dump of the TensorStore spec, no cause
  if len(first) > 300:
    first = first[:300] + "..."
  return (f"{type(e).__name__}: {first}" if first else type(e).__name__), "see the cause"


class _OrbaxFilter(py_logging.Filter):
  """Drops Orbax log records: its errors (a failed save or restore is logged with a traceback before it is
  raised, and jaxcap reports the raised error in one line) when `errors`, and its warning that a save carries
  no metrics (most saves deliberately do not: metrics mark the new bests)."""

  def __init__(self, errors: bool):
    super().__init__()
    self.errors = errors

  def filter(self, record):
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if self.errors and record.levelno >= py_logging.ERROR:
      return False
    return "did not provide metrics" not in record.getMessage()


def _add_filter(errors: bool) -> None:
  logger = py_logging.getLogger("absl")
  if not any(isinstance(f, _OrbaxFilter) and f.errors == errors for f in logger.filters):
    logger.addFilter(_OrbaxFilter(errors))


def _drop_orbax_noise() -> None:
  _add_filter(errors=False)


def _loop_closed(exc) -> bool:
  """A TensorStore write of a failed save finishing after Orbax closed the event loop it reports to."""
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _orbax_leftover(u) -> bool:
  """An Orbax read or write coroutine garbage-collected with its error unretrieved: a sibling of the failure that
  was already reported (one damaged array fails every read of it)."""
  code = getattr(u.object, "cr_code", None)
  return _loop_closed(u.exc_value) or (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename)


class _DropAsyncioLeftovers(py_logging.Filter):
  def filter(self, record):
    return "exception was never retrieved" not in record.getMessage()


def quiet_orbax_errors() -> None:
  """Called by the commands: keeps Orbax's own error tracebacks off stderr (their errors arrive as one line),
  and the echoes of a failed save: its other writes, still running when Orbax gave up, report to an event loop
  that is closed ("Event loop is closed", "Future exception was never retrieved"), many times over, and those
  of a failed read (its sibling coroutines collected with their errors unretrieved)."""
  import sys
  import threading
  _add_filter(errors=True)
  asyncio_log = py_logging.getLogger("asyncio")
  if not any(isinstance(f, _DropAsyncioLeftovers) for f in asyncio_log.filters):
    asyncio_log.addFilter(_DropAsyncioLeftovers())
  if getattr(sys, "_jaxcap_quiet", False):
    return
  sys._jaxcap_quiet = True
  excepthook, thread_hook, unraisable = sys.excepthook, threading.excepthook, sys.unraisablehook
  sys.excepthook = lambda t, e, tb: None if _loop_closed(e) else excepthook(t, e, tb)
  threading.excepthook = lambda a: None if _loop_closed(a.exc_value) else thread_hook(a)
  sys.unraisablehook = lambda u: None if _orbax_leftover(u) else unraisable(u)


# ---------------------------------------------------------------------------------------------------------
# Fault injection for the fault tests: JAXCAP_FAULT="<point>@<step>[:pause]" SIGKILLs the process (or pauses it
# until <workdir>/fault.paused is deleted) at one point of the save protocol:
#   save    before the save of <step> is issued (nothing of it on disk)
#   write   <step>'s tmp dir fully written, not yet committed
#   commit  <step> committed, the older saves the policy drops not yet removed
#   gc      <step> committed and the dropped saves removed
# ---------------------------------------------------------------------------------------------------------
FAULT_ENV = "JAXCAP_FAULT"
PAUSE_FILE = "fault.paused"


def _fault(point: str, step: int, workdir: str) -> None:
  spec = os.environ.get(FAULT_ENV)
  if not spec:
    return
  where, _, action = spec.partition(":")
  if where != f"{point}@{step}":
    return
  if action == "pause":
    flag = os.path.join(workdir, PAUSE_FILE)
    with open(flag, "w") as f:
      f.write(f"{point}@{step}\n")
    while os.path.exists(flag):
      time.sleep(0.05)
    return
  os.kill(os.getpid(), signal.SIGKILL)


def _install_fault_hooks(manager: ocp.CheckpointManager, workdir: str) -> None:
  if not os.environ.get(FAULT_ENV):
    return
  from orbax.checkpoint._src.path import atomicity
  cls = atomicity.AtomicRenameTemporaryPath
  if not getattr(cls, "_jaxcap_hooked", False):
    finalize = cls.finalize

    async def hooked_finalize(self, *a, **kw):
      if self._final_path.name.isdigit():  # the step dir (item dirs inside it are named state, meta, ...)
        _fault("write", int(self._final_path.name), workdir)
      return await finalize(self, *a, **kw)
    cls.finalize, cls._jaxcap_hooked = hooked_finalize, True
  deleter = manager._checkpoint_deleter  # pylint: disable=protected-access
  delete_steps = deleter.delete_steps

  def hooked_delete_steps(steps):
    step = manager.latest_step()
    _fault("commit", step, workdir)
    delete_steps(steps)
    _fault("gc", step, workdir)
  deleter.delete_steps = hooked_delete_steps


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


def _abstract(tree, sharding=None):
  """ShapeDtypeStructs of `tree`, placed in `sharding` when given (restored straight into it)."""
  import jax
  if sharding is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _read(ref: Ref, like=None, items=(STATE, META), sharding=None) -> dict:
  """The items of one checkpoint (state restored against `like`, or as saved). Raises whatever Orbax raises."""
  args = {STATE: ocp.args.StandardRestore(_abstract(like, sharding) if like is not None else None),
          META: ocp.args.JsonRestore()}
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    out = checkpointer.restore(ref.path, args=ocp.args.Composite(**{k: args[k] for k in items}))
  finally:
    checkpointer.close()
  if META in items and not isinstance(out[META], dict):
    raise ValueError(f"{META} is not a JSON object")
  return out


def _metrics(path: str) -> dict | None:
  """The Orbax metrics of a step dir (None when it has none or they cannot be read)."""
  try:
    with open(os.path.join(path, "metrics", "metrics")) as f:
      m = json.load(f)
    if isinstance(m, dict) and SCORE not in m and LEGACY_SCORE in m:  # saved before train.select_metric
      m = {SCORE: m[LEGACY_SCORE]}
    return m if isinstance(m, dict) and isinstance(m.get(SCORE), (int, float)) else None
  except (OSError, ValueError):
    return None


def _committed_steps(directory: str) -> list[int]:
  """Steps with a committed save in `directory`: dirs named by their step (an unfinished one carries Orbax's
  tmp suffix)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def refs(directory: str) -> list[Ref]:
  return [Ref(directory, s, (_metrics(os.path.join(directory, str(s))) or {}).get(SCORE))
          for s in _committed_steps(directory)]


def ranked(workdir: str) -> list[Ref]:
  """A workdir's checkpoints in the order inference should try them: the saves marked best on dev, highest
  dev score first (a workdir of the earlier layout also has best/), then the rest, newest first."""
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
    return [Ref(parent, int(name), (_metrics(path) or {}).get(SCORE))]
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
      out = _read(ref)
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


# ---------------------------------------------------------------------------------------------------------
# The trainer's side
# ---------------------------------------------------------------------------------------------------------
def _options(keep: int) -> ocp.CheckpointManagerOptions:
  pp = ocp.checkpoint_managers
  return ocp.CheckpointManagerOptions(
      create=True, best_fn=lambda m: m.get(SCORE, m.get(LEGACY_SCORE)), best_mode="max",
      preservation_policy=pp.AnyPreservationPolicy([
          pp.LatestN(n=keep),
          pp.BestN(get_metric_fn=lambda m: m.get(SCORE, m.get(LEGACY_SCORE)), reverse=False, n=1,
                   keep_checkpoints_without_metrics=False)]))


class Checkpoints:
  """A workdir's checkpoints as the trainer sees them: one Orbax manager (see the module docstring).

  Opening it removes unfinished saves (tmp dirs) left by a killed run, one line each; the caller holds the
  workdir lock, so they cannot be another trainer's save in progress.
  """

  def __init__(self, workdir: str, keep: int, log: Callable[[str], None] = print, is_main: bool = True):
    self.workdir, self.keep, self.log, self.is_main = workdir, keep, log, is_main
    self.directory = os.path.join(workdir, LATEST)
    import jax
    self._multi = jax.process_count() > 1
    if is_main:
      self._remove_unfinished()
    # Orbax reads every save's metrics when it opens the directory, and an unreadable one stops it there.
    if is_main:
      for step in _committed_steps(self.directory):
        self._check_metrics(step)
    if self._multi:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("jaxcap: checkpoints checked")
    self._pending: int | None = None
    _drop_orbax_noise()
    self.manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    manager = ocp.CheckpointManager(self.directory, options=_options(self.keep))
    _install_fault_hooks(manager, self.workdir)
    return manager

  def _remove_unfinished(self) -> None:
    if not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      if TMP_MARK in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        self.log(f"removed {os.path.join(self.directory, name)}: an unfinished save of a run that stopped "
                 f"mid-save")

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best(self) -> Ref | None:
    return best(self.workdir)

  def restore_latest(self, like, config, sharding=None) -> tuple[dict, dict] | None:
    """(state restored against `like`, meta) of the newest checkpoint that restores; None when there is none.

    A newer one that does not restore is reported in one line (naming it and the reason) and moved to
    damaged/ (never deleted). A checkpoint of an incompatible config raises at once (nothing moved); so does
    a workdir where no checkpoint restores (nothing moved: the cause may be the code, not the files).
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    failed: list[tuple[int, str]] = []
    for step in steps:
      ref = Ref(self.directory, step)
      try:
        meta = _read(ref, items=(META,))[META]
        if not {"step", "config"} <= set(meta):
          raise ValueError(f"{META} lacks step or config")
      except Exception as e:  # noqa: BLE001  (damage shows up as many types)
        failed.append((step, describe(e)))
        continue
      check_compatible(meta["config"], config, self.workdir)
      try:
        state = self.manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(_abstract(like, sharding))}))[STATE]
      except Exception as e:  # noqa: BLE001
        failed.append((step, describe(e)))
        continue
      for bad, reason in failed:
        self._move_aside(bad, reason, f"resuming from step {step}")
      if failed:
        self._reopen()
      return state, meta
    if failed:
      bad, reason = failed[0]
      raise CheckpointError(f"no checkpoint in {self.directory} restores (newest: step {bad}: {reason}); move "
                            f"{self.directory} aside to start over, or use another --workdir")
    return None

  def _check_metrics(self, step: int) -> None:
    """An unreadable metrics file is rewritten from the save's meta, which records the same dev BLEU-4 (one
    line says so); if the meta cannot be read either, the save is moved aside."""
    step_dir = os.path.join(self.directory, str(step))
    path = os.path.join(step_dir, "metrics", "metrics")
    if not os.path.exists(path) or _metrics(step_dir) is not None:
      return
    try:
      meta = _read(Ref(self.directory, step), items=(META,))[META]
      score = meta["best_score"] if "best_score" in meta else meta["best_bleu4"]
      metric = meta["config"]["train"].get("select_metric", "bleu4")
      assert meta["dev"][f"dev_{metric}"] == score  # the marked saves are the new bests
    except Exception as e:  # noqa: BLE001
      self._move_aside(step, f"{path} cannot be read, nor its meta: {describe(e)}", "its dev score is unknown")
      return
    fileio.write_atomic(path, json.dumps({SCORE: score}))
    self.log(f"checkpoint {step_dir}: its metrics file could not be read; rewritten from its meta (dev "
             f"{metric} {score:.4g})")

  def _move_aside(self, step: int, reason: str, then: str) -> None:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.workdir, DAMAGED, f"{step}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if self.is_main:
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.replace(src, dst)
    self.log(f"checkpoint {src} cannot be restored ({reason}); moved to {dst}, {then}")

  def _reopen(self) -> None:
    import jax
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("jaxcap: damaged checkpoints moved")
    self.manager.close()
    self.manager = self._open()

  def save(self, step: int, state, meta: dict, score: float | None = None) -> None:
    """Saves in the background; `score` (its dev `train.select_metric`) marks the save as a new best on dev. A failure of this save or of the
    one before it raises CheckpointError (see `poll`)."""
    self.poll(block=True)
    if step in self.manager.all_steps():  # already on disk (a replay cannot produce another state)
      return
    _fault("save", step, self.workdir)
    args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)})
    try:
      self.manager.save(step, args=args, metrics=None if score is None else {SCORE: float(score)}, force=True)
    except Exception as e:  # noqa: BLE001
      self._failed(step, e)
    self._pending = step

  def poll(self, block: bool = False) -> None:
    """Raises CheckpointError if the save in flight failed. Non-blocking unless `block`: the trainer calls it
    every step, so a full disk stops a one-process run at the next step, not at the next save (several
    processes learn of it at the next save, which they enter together)."""
    if self._pending is None or (not block and (self._multi or self.manager.is_saving_in_progress())):
      return
    step, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._failed(step, e)

  def _failed(self, step: int, error: Exception) -> None:
    """A save failed: remove its unfinished dir (what a full disk needs back first; writes still in flight may
    leave a trace, which the next trainer removes), confirm the last good checkpoint restores, raise one line."""
    path = os.path.join(self.directory, str(step))
    cause, fix = cause_and_fix(error)
    with contextlib.suppress(Exception):
      self.manager.close()
    if self.is_main and os.path.isdir(self.directory):
      for name in os.listdir(self.directory):
        if name.startswith(f"{step}{TMP_MARK}"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    good = None
    for s in reversed(_committed_steps(self.directory)):
      try:
        _read(Ref(self.directory, s))
        good = s
        break
      except Exception:  # noqa: BLE001
        continue
    last = (f"the last good checkpoint, {self.directory}/{good}, restores intact" if good is not None
            else "no earlier checkpoint to resume from")
    raise CheckpointError(f"cannot save checkpoint {path}: {cause}; training stopped, {last}. {fix.capitalize()} "
                          f"and rerun to resume")

  def restore_best(self, like, sharding=None) -> tuple[Ref, dict] | None:
    """(ref, state restored against `like`) of the best-on-dev checkpoint; if it does not restore, one line
    says so and the next best on dev is tried. None when there is none (or none restores)."""
    marked = [r for r in ranked(self.workdir) if r.score is not None]
    for ref in marked:
      try:
        return ref, _read(ref, like, items=(STATE,), sharding=sharding)[STATE]
      except Exception as e:  # noqa: BLE001
        self.log(f"checkpoint {ref.path} (best on dev) cannot be restored ({describe(e)}); trying the next best")
    if marked:
      self.log(f"no best-on-dev checkpoint in {self.workdir} restores; no test evaluation")
    return None

  def close(self, quiet: bool = False) -> None:
    """Waits for the save in flight and closes the manager; its failure raises CheckpointError unless
    `quiet` (another error is on its way)."""
    try:
      self.poll(block=True)
    except CheckpointError:
      if not quiet:
        raise
    finally:
      with contextlib.suppress(Exception):
        self.manager.close()


# ---------------------------------------------------------------------------------------------------------
# One trainer per workdir
# ---------------------------------------------------------------------------------------------------------
class WorkdirLock:
  """An exclusive flock on <workdir>/train.lock, with the holder (host, pid, start time) written inside for
  the message another trainer gets. The kernel releases it when the holder exits however it exits, so a
  killed trainer leaves the file (with its name in it) but no lock: the next trainer takes it over and says so."""

  def __init__(self, workdir: str, log: Callable[[str], None] = print):
    self.path = os.path.join(workdir, LOCK)
    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = self._holder()
      os.close(self.fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise CheckpointError(f"{workdir} is in use by another trainer ({holder or 'holder unknown'}); wait for it "
                            f"to finish or use another --workdir") from None
    previous = self._holder()
    if previous:
      log(f"took over {self.path} from a trainer that is gone ({previous})")
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, f"host {socket.gethostname()}, pid {os.getpid()}, since "
                       f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n".encode(), 0)

  def _holder(self) -> str:
    try:
      return os.pread(self.fd, 512, 0).decode(errors="replace").strip()
    except OSError:
      return ""

  def release(self) -> None:
    if self.fd is not None:
      with contextlib.suppress(OSError):
        os.ftruncate(self.fd, 0)  # an empty file: released cleanly
      os.close(self.fd)
      self.fd = None


@contextlib.contextmanager
def locked(workdir: str, log: Callable[[str], None] = print):
  """Holds the workdir lock for the block. Multi-process: process 0 takes it and every process learns whether
  it got it, so a refused job stops everywhere at once."""
  import jax
  import numpy as np
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir, log)
    except CheckpointError as e:
      error = str(e)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if int(multihost_utils.broadcast_one_to_all(np.int32(error is not None))) and error is None:
      error = f"{workdir} is in use by another trainer (see process 0)"
  if error:
    raise CheckpointError(error)
  try:
    yield
  finally:
    if lock:
      lock.release()
