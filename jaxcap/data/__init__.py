"""Reading Flickr8k-style folders, vocabulary, tf.data pipelines and synthetic data.

Nothing in here imports JAX: the data room hands numpy arrays to the trainer.
"""
import os


def cache_root() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "jaxcap")


def resolve_data_dir(data_config) -> str:
  """The dataset folder a config names; the synthetic dataset is generated there on first use."""
  from jaxcap.data import flickr8k, synthetic

  d = data_config
  if d.synthetic:
    out = d.synthetic_dir or os.path.join(cache_root(), f"synthetic-{d.synthetic_num_images}-{d.synthetic_size}")
    if not os.path.exists(out):  # written aside and renamed, so a crash never leaves half a dataset
      tmp = f"{out}.tmp{os.getpid()}"
      synthetic.write(tmp, d.synthetic_num_images, d.synthetic_size, seed=0)
      os.replace(tmp, out)
    return out
  if not d.data_dir:
    raise flickr8k.DataError("config.data.data_dir is empty: set --config.data.data_dir=/path/to/flickr8k "
                             "(or data.synthetic=True)")
  return d.data_dir
