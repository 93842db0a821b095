"""A training command that SIGKILLs itself, or pauses, at one point of the checkpoint save protocol, so the fault
tests (tests/test_faults.py) depend on no timing:

    python -m tests.faults <point>@<step>[:pause] -- <train.py flags>

  save    before the save of <step> is issued (nothing of it on disk)
  write   <step>'s tmp dir fully written, not yet committed
  commit  <step> committed, the older saves the policy drops not yet removed
  gc      <step> committed and the dropped saves removed

With ":pause" the process writes <workdir>/fault.paused and waits until it is deleted, instead of dying. It
wraps Orbax's commit (AtomicRenameTemporaryPath.finalize) and, on each manager `Checkpoints.new_manager`
returns, its save and its deleter of the saves the policy drops; the product has no fault switch.
"""
import os
import signal
import sys
import time

PAUSE_FILE = "fault.paused"


def command(train_cmd: list, fault: str) -> list:
  """`train_cmd` ([python, train.py, flags...]) as a run that stops at `fault`."""
  return [train_cmd[0], "-m", "tests.faults", fault, "--", *train_cmd[2:]]


def install(spec: str) -> None:
  """Patches jaxcap and Orbax so the process stops at `spec` ("<point>@<step>[:pause]")."""
  from orbax.checkpoint._src.path import atomicity

  from jaxcap.checkpoint.manager import Checkpoints

  where, _, action = spec.partition(":")

  def fault(point: str, step: int, workdir: str) -> None:
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

  cls = atomicity.AtomicRenameTemporaryPath
  finalize = cls.finalize

  async def hooked_finalize(self, *a, **kw):
    final = self._final_path  # pylint: disable=protected-access
    if final.name.isdigit():  # the step dir <workdir>/checkpoints/<step> (item dirs inside it: state, meta, ...)
      fault("write", int(final.name), str(final.parent.parent))
    return await finalize(self, *a, **kw)
  cls.finalize = hooked_finalize

  new_manager = Checkpoints.new_manager

  def hooked_new_manager(self):
    manager = new_manager(self)
    save = manager.save

    def hooked_save(step, *a, **kw):
      fault("save", step, self.workdir)
      return save(step, *a, **kw)
    manager.save = hooked_save
    deleter = manager._checkpoint_deleter  # pylint: disable=protected-access
    delete_steps = deleter.delete_steps

    def hooked_delete_steps(steps):
      step = manager.latest_step()
      fault("commit", step, self.workdir)
      delete_steps(steps)
      fault("gc", step, self.workdir)
    deleter.delete_steps = hooked_delete_steps
    return manager
  Checkpoints.new_manager = hooked_new_manager


def main() -> None:
  spec, sep, *flags = sys.argv[1:]
  assert sep == "--", "usage: python -m tests.faults <point>@<step>[:pause] -- <train.py flags>"
  install(spec)
  from jaxcap import train_cli
  sys.argv = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py"), *flags]
  train_cli.run()


if __name__ == "__main__":
  main()
