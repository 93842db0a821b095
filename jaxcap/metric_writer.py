"""The run's metrics: metrics.jsonl and TensorBoard event files (`MetricWriter`), and the progress bar with the
logged training metrics (`Progress`)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time

import jax
import numpy as np
from tqdm import tqdm

from jaxcap import fileio
from jaxcap.train_state import TrainError


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
      fileio.write_atomic(self.path, "".join(keep))
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
