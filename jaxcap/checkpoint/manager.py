"""The trainer's checkpoints and their save protocol.

Every save is one Orbax commit (a tmp dir written, then renamed) of one manager, whose preservation policy keeps
the latest N saves and the best save by the dev score (see `format`). A save that is the latest and the best is
one directory: there is no second commit a kill could separate from the first. The best is what is on disk,
never a number carried along: on resume it is read back from the saves' metrics. A kill mid-save leaves a
`<step>.orbax-checkpoint-tmp-*` dir, which the next trainer removes (one line).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from typing import Callable

import orbax.checkpoint as ocp

from jaxcap import fileio
from jaxcap.checkpoint.errors import CheckpointError, cause_and_fix, describe
from jaxcap.checkpoint.format import (DAMAGED, LATEST, LEGACY_SCORE, META, SCORE, STATE, TMP_MARK, Ref, abstract,
                                      best, check_compatible, committed_steps, ranked, read, saved_metrics)


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
      for step in committed_steps(self.directory):
        self._check_metrics(step)
    if self._multi:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("jaxcap: checkpoints checked")
    self._pending: int | None = None
    self.manager = self.new_manager()

  def new_manager(self) -> ocp.CheckpointManager:
    """The Orbax manager of this workdir's checkpoints, with the preservation policy above. Every manager this
    object uses is made here (the fault tests wrap it to stop a save at a chosen point)."""
    return ocp.CheckpointManager(self.directory, options=_options(self.keep))

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
        meta = read(ref, items=(META,))[META]
        if not {"step", "config"} <= set(meta):
          raise ValueError(f"{META} lacks step or config")
      except Exception as e:  # noqa: BLE001  (damage shows up as many types)
        failed.append((step, describe(e)))
        continue
      check_compatible(meta["config"], config, self.workdir)
      try:
        state = self.manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(abstract(like, sharding))}))[STATE]
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
    """An unreadable metrics file is rewritten from the save's meta, which records the same dev score (one line
    says so); if the meta cannot be read either, the save is moved aside."""
    step_dir = os.path.join(self.directory, str(step))
    path = os.path.join(step_dir, "metrics", "metrics")
    if not os.path.exists(path) or saved_metrics(step_dir) is not None:
      return
    try:
      meta = read(Ref(self.directory, step), items=(META,))[META]
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
    self.manager = self.new_manager()

  def save(self, step: int, state, meta: dict, score: float | None = None) -> None:
    """Saves in the background; `score` (its dev `train.select_metric`) marks the save as a new best on dev. A
    failure of this save or of the one before it raises CheckpointError (see `poll`)."""
    self.poll(block=True)
    if step in self.manager.all_steps():  # already on disk (a replay cannot produce another state)
      return
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
    for s in reversed(committed_steps(self.directory)):
      try:
        read(Ref(self.directory, s))
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
        return ref, read(ref, like, items=(STATE,), sharding=sharding)[STATE]
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
