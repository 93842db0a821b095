"""`tf`: TensorFlow imported for tf.data only, with every GPU hidden from it.

TF would otherwise reserve most of an accelerator's memory that JAX needs. Import `tf` from here.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # devices already initialized by someone else: nothing left to hide
  pass

__all__ = ["tf"]
