"""What the commands keep off stderr, installed by `install()` from each entry point (nothing at import).

Orbax logs a failed save or restore with a traceback before it raises, and jaxcap reports the raised error in
one line; it warns on every save that carries no metrics, and most saves carry none by design (metrics mark the
new bests on dev). A failed save also echoes: its other writes, still running when Orbax gave up, report to an
event loop that is closed ("Event loop is closed", "Future exception was never retrieved"), many times over;
so do the sibling coroutines of a failed read, collected with their errors unretrieved.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

_ORBAX = f"{os.sep}orbax{os.sep}"
_installed = False


class _OrbaxFilter(logging.Filter):
  """Drops Orbax's error records and its warning that a save carries no metrics."""

  def filter(self, record):
    if _ORBAX not in record.pathname:
      return True
    if record.levelno >= logging.ERROR:
      return False
    return "did not provide metrics" not in record.getMessage()


class _DropAsyncioLeftovers(logging.Filter):
  def filter(self, record):
    return "exception was never retrieved" not in record.getMessage()


def _loop_closed(exc) -> bool:
  """A TensorStore write of a failed save finishing after Orbax closed the event loop it reports to."""
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _orbax_leftover(u) -> bool:
  """An Orbax read or write coroutine garbage-collected with its error unretrieved: a sibling of the failure that
  was already reported (one damaged array fails every read of it)."""
  code = getattr(u.object, "cr_code", None)
  return _loop_closed(u.exc_value) or (code is not None and _ORBAX in code.co_filename)


def install() -> None:
  """Adds the log filters and wraps sys.excepthook, threading.excepthook and sys.unraisablehook to drop the
  echoes above. Calling it again does nothing."""
  global _installed
  if _installed:
    return
  _installed = True
  logging.getLogger("absl").addFilter(_OrbaxFilter())
  logging.getLogger("asyncio").addFilter(_DropAsyncioLeftovers())
  excepthook, thread_hook, unraisable = sys.excepthook, threading.excepthook, sys.unraisablehook
  sys.excepthook = lambda t, e, tb: None if _loop_closed(e) else excepthook(t, e, tb)
  threading.excepthook = lambda a: None if _loop_closed(a.exc_value) else thread_hook(a)
  sys.unraisablehook = lambda u: None if _orbax_leftover(u) else unraisable(u)
