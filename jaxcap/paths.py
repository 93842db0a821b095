"""Where jaxcap keeps files of its own: the one cache root every default location is built from.

The prepared TFDS datasets, the synthetic dataset, feature caches and converted weights all live under
`cache_root()` unless an override says otherwise (JAXCAP_TFDS_DIR, JAXCAP_WEIGHTS_DIR, config fields).
"""
import os


def cache_root() -> str:
  """~/.cache/jaxcap: the root of every default cache location."""
  return os.path.join(os.path.expanduser("~"), ".cache", "jaxcap")
