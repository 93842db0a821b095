"""Where jaxcap keeps files of its own: the one cache root every default location is built from.

The prepared TFDS datasets, the synthetic dataset, feature caches and converted weights all live under
`cache_root()` unless an override says otherwise (JAXCAP_TFDS_DIR, JAXCAP_WEIGHTS_DIR, config fields).
"""
import errno
import os


def cache_root() -> str:
  """~/.cache/jaxcap: the root of every default cache location."""
  return os.path.join(os.path.expanduser("~"), ".cache", "jaxcap")


_IO_CAUSES = ((errno.ENOSPC, "No space left on device", "disk full (No space left on device)", "free some space"),
              (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded", "free some space"),
              (errno.EACCES, "Permission denied", "permission denied", "fix the permissions"),
              (errno.EROFS, "Read-only file system", "read-only file system", "use a writable location"))


def io_cause(e: BaseException) -> tuple[str, str] | None:
  """(cause, what to do) when `e` (or an exception it came from; TensorFlow, TensorStore and Orbax wrap OS
  errors in their own types and messages) is a full disk, a quota or a permission problem; else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    for code, text, cause, fix in _IO_CAUSES:
      if getattr(e, "errno", None) == code or text in str(e):
        return cause, fix
    e = e.__cause__ or e.__context__
  return None
