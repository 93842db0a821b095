"""How jaxcap's commands end their process."""
import os
import sys


def exit_process(code: int) -> None:
  """Exits with `code`. After an error's one line the process exits without joining threads: the non-daemon
  signalling threads of an Orbax save that failed before it began (a read-only workdir) wait forever."""
  if code:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)
