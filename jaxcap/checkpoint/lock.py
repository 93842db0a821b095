"""One trainer per workdir: an exclusive lock on <workdir>/train.lock."""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import socket
from typing import Callable

from jaxcap.checkpoint.errors import CheckpointError
from jaxcap.checkpoint.format import LOCK


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
