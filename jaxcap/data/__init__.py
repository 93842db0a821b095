"""The data layer's shared pieces: the `DataError` it raises and the dataset folder a config names.

Submodules: flickr8k (source folders), tfds_builder (preparation), pipeline (tf.data), vocab, batching,
preprocessing, images, synthetic, stats (CLI). Nothing in here imports JAX or the models package: the data room
hands numpy arrays to the trainer.
"""
import os

from jaxcap import paths


class DataError(Exception):
  """A dataset folder that cannot be used; the message is one line naming the path and the problem."""


def resolve_data_dir(data_config) -> str:
  """The dataset folder a config names; the synthetic dataset is generated there on first use."""
  from jaxcap.data import synthetic

  d = data_config
  if d.synthetic:
    out = d.synthetic_dir or os.path.join(paths.cache_root(),
                                          f"synthetic-{d.synthetic_num_images}-{d.synthetic_size}")
    if not os.path.exists(out):  # written aside and renamed, so a crash never leaves half a dataset
      tmp = f"{out}.tmp{os.getpid()}"
      synthetic.write(tmp, d.synthetic_num_images, d.synthetic_size, seed=0)
      os.replace(tmp, out)
    return out
  if not d.data_dir:
    raise DataError("config.data.data_dir is empty: set --config.data.data_dir=/path/to/flickr8k "
                    "(or data.synthetic=True)")
  return d.data_dir
