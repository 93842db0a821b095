"""How jaxcap's commands end: the one line a user-fixable error becomes, and the process exit."""
import errno
import os
import sys

USER_FIXABLE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def default_workdir(config_path: str) -> str:
  """workdirs/<config file name>: where a command run without --workdir writes."""
  return os.path.join("workdirs", os.path.splitext(os.path.basename(config_path))[0])


def error_line(e: BaseException, workdir: str) -> str | None:
  """The one line a training command prints for an error the user can fix (bad data, config, weights or
  checkpoint; a full disk or a permission on a file it writes), else None (a bug: let it raise)."""
  from jaxcap import checkpoint, pretrained, train_state
  from jaxcap.config_check import ConfigError
  from jaxcap.data import DataError
  if isinstance(e, (train_state.TrainError, DataError, pretrained.WeightsError, checkpoint.CheckpointError,
                    ConfigError)):
    return f"error: {e}"
  if isinstance(e, OSError) and e.errno in USER_FIXABLE_ERRNOS:
    return f"error: {e.filename or workdir}: {e.strerror}"
  return None


def exit_process(code: int) -> None:
  """Exits with `code`. After an error's one line the process exits without joining threads: the non-daemon
  signalling threads of an Orbax save that failed before it began (a read-only workdir) wait forever."""
  if code:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)
