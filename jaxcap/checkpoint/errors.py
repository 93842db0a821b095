"""What goes wrong with a checkpoint, in one line."""
from __future__ import annotations

from jaxcap import paths


class CheckpointError(Exception):
  """A checkpoint or workdir that cannot be used; the message is one line naming the path and the problem."""


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
