"""Stopping a run cleanly: SIGTERM or Ctrl-C asks the training loop to save and stop at a step every process
agrees on (`Preemption.reached`)."""
from __future__ import annotations

import os
import signal
import threading

import jax


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
