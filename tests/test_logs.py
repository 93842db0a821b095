"""`jaxcap.logs`: importing jaxcap (or opening checkpoints) installs nothing global; `logs.install()` does, once.
Each check runs in a fresh interpreter, so the pytest process's own hooks stay untouched."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STATE = """
import logging, sys, threading
def state():
  return ([type(f).__name__ for f in logging.getLogger("absl").filters],
          [type(f).__name__ for f in logging.getLogger("asyncio").filters],
          sys.excepthook is sys.__excepthook__, threading.excepthook is threading.__excepthook__,
          sys.unraisablehook is sys.__unraisablehook__)
CLEAN = ([], [], True, True, True)
"""


def _python(code: str) -> None:
  out = subprocess.run([sys.executable, "-c", STATE + textwrap.dedent(code)], capture_output=True, text=True,
                       cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]


def test_importing_jaxcap_and_opening_checkpoints_installs_nothing(tmp_path):
  _python(f"""
    import jaxcap, jaxcap.checkpoint, jaxcap.logs
    from jaxcap import checkpoint
    assert state() == CLEAN, state()
    checkpoint.Checkpoints({str(tmp_path)!r}, keep=2, log=lambda s: None).close()
    assert state() == CLEAN, state()
  """)


def test_install_adds_the_filters_and_hooks_once():
  _python("""
    import os
    from jaxcap import logs
    logs.install()
    once = state()
    assert once == (["_OrbaxFilter"], ["_DropAsyncioLeftovers"], False, False, False), once
    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
    logs.install()
    assert state() == once and (sys.excepthook, threading.excepthook, sys.unraisablehook) == hooks

    def record(path, level, msg):
      return logging.LogRecord("absl", level, path, 1, msg, None, None)
    orbax = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "manager.py")
    keep = logging.getLogger("absl").filters[0].filter
    assert not keep(record(orbax, logging.ERROR, "save failed"))
    assert not keep(record(orbax, logging.WARNING, "step 10 did not provide metrics"))
    assert keep(record(orbax, logging.WARNING, "something else"))
    assert keep(record("/x/jaxcap/train_lib.py", logging.ERROR, "save failed"))
  """)
