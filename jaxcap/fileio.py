"""Files written whole or not at all: every file jaxcap writes outside Orbax goes through here.

A crash (or a full disk) mid-write leaves the previous file, or none, under the real name, never half a file.
The temporary name carries the process id, so processes of a multi-host job sharing a folder never write one
file, and keeps the extension, since writers such as `np.savez` append theirs to names without it.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


def temporary_name(path: str) -> str:
  """`dir/name.tmp<pid>.ext` beside `dir/name.ext`."""
  stem, ext = os.path.splitext(path)
  return f"{stem}.tmp{os.getpid()}{ext}"


@contextlib.contextmanager
def atomic_paths(*paths: str) -> Iterator[tuple[str, ...]]:
  """Yields a temporary name per path; when the block ends without an exception, each is renamed onto its path
  (in order); on an exception the temporary files are removed and the real ones left as they were."""
  tmps = tuple(temporary_name(p) for p in paths)
  try:
    yield tmps
    for tmp, path in zip(tmps, paths):
      os.replace(tmp, path)
  except BaseException:
    for tmp in tmps:
      with contextlib.suppress(OSError):
        os.remove(tmp)
    raise


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes text or bytes to path whole or not at all."""
  with atomic_paths(path) as (tmp,):
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
      f.write(data)
