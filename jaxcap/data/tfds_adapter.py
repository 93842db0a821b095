"""Any TFDS captioning dataset (an image and a sequence of captions per example) in jaxcap's form.

`TfdsCaptions(name, data_dir, use_restval)` wraps a TFDS builder (e.g. `coco_captions`, whose Karpathy splits
are train / val / test / restval) and presents what jaxcap's own builders present: `data_dir`,
`info.splits[split].num_examples` and `as_dataset(split=...)` yielding `image`, `image/filename` and
`captions` (a [N] string tensor), under jaxcap's split names (plus `cache_id`, what the feature cache is keyed
by, which says whether train holds restval):

    train <- train (+ restval when use_restval and the dataset has it)    dev <- validation | val | dev
    test  <- test

Captions are found as a `Sequence(Text)` feature or a `Sequence({"text": Text, ...})` (coco_captions'
`captions/text`), named `captions` or `caption`; the file name is `image/filename`, else `image/id`. Preparing
it is TFDS's `download_and_prepare` (COCO downloads ~20 GB the first time).
"""
from __future__ import annotations

import dataclasses
import re
import sys
import types

from jaxcap.data import DataError

DEV_NAMES = ("validation", "val", "dev")
# Split names of datasets TFDS knows without having prepared them (a mocked builder lists no splits).
KNOWN_SPLITS = {"coco_captions": ("train", "restval", "val", "test")}


def _is_text(feature) -> bool:
  """A scalar string feature (tfds.features.Text, or a Tensor declared as np.str_)."""
  import tensorflow_datasets as tfds
  if not isinstance(feature, tfds.features.FeatureConnector) or isinstance(feature, tfds.features.FeaturesDict):
    return False
  info = feature.get_tensor_info()
  return info.shape == () and info.tf_dtype.name == "string"


def _caption_path(features) -> tuple[str, str | None]:
  """(caption feature, its text key or None) of a TFDS FeaturesDict."""
  import tensorflow_datasets as tfds
  for name in ("captions", "caption"):
    f = features[name] if name in features else None
    if isinstance(f, tfds.features.Sequence):
      inner = f.feature
      if _is_text(inner):
        return name, None
      if isinstance(inner, tfds.features.FeaturesDict) and "text" in inner and _is_text(inner["text"]):
        return name, "text"
  raise DataError("no caption feature (a Sequence of text, or of {'text': text, ...}, named captions or caption)")


class TfdsCaptions:
  """A TFDS captioning dataset read through jaxcap's split names and feature names."""

  def __init__(self, name: str, data_dir: str | None = None, use_restval: bool = True, prepare: bool = True,
               verbose: bool = True):
    import tensorflow_datasets as tfds

    from jaxcap.data.tf_setup import tf  # noqa: F401  (hide GPUs before TFDS touches TF)

    self.name = name
    try:
      self.builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
      raise DataError(f"tfds:{name}: no TFDS dataset of that name (data.dataset; see "
                      f"`tfds.list_builders()`)") from None
    except (ValueError, AssertionError) as e:  # e.g. an unknown config or version: TFDS says which
      msg = str(e).splitlines()[0].split('": ', 1)[-1].rstrip(": ")
      raise DataError(f"tfds:{name}: {msg[:200]}") from None
    if prepare and not self.builder.is_prepared():
      if verbose:
        print(f"tfds:{name}: download_and_prepare into {self.builder.data_dir} (once)", file=sys.stderr)
      self.builder.download_and_prepare()
    features = self.builder.info.features
    if "image" not in features:
      raise DataError(f"tfds:{name}: no 'image' feature (features: {sorted(features.keys())})")
    try:
      self._captions, self._text = _caption_path(features)
    except DataError as e:
      raise DataError(f"tfds:{name}: {e} (features: {sorted(features.keys())})") from None
    self._filename = next((k for k in ("image/filename", "image/id") if k in features), None)
    known = list(self.builder.info.splits) or list(KNOWN_SPLITS.get(self.builder.name, ()))
    if not known:
      raise DataError(f"tfds:{name}: the dataset lists no splits (is it prepared?)")
    self.split_map = {"train": ["train"] + (["restval"] if use_restval and "restval" in known else []),
                      "dev": [n for n in DEV_NAMES if n in known][:1], "test": ["test"] if "test" in known else []}
    for s in ("train", "dev"):
      if not self.split_map[s] or self.split_map[s][0] not in known:
        raise DataError(f"tfds:{name}: no {s} split (needs {' / '.join(('train',) if s == 'train' else DEV_NAMES)}; "
                        f"the dataset has {', '.join(known)})")
    self.data_dir = self.builder.data_dir
    # What the feature cache is keyed by (jaxcap's own builders: their data_dir): train differs with restval.
    self.cache_id = self.data_dir + ("+restval" if "restval" in self.split_map["train"] else "")
    self.info = types.SimpleNamespace(splits={
        s: types.SimpleNamespace(num_examples=self._count(s)) for s, v in self.split_map.items() if v})

  def tfds_split(self, split):
    """jaxcap split (a name, `name[slice]`, or `tfds.even_splits`'s object) -> the TFDS split."""
    if isinstance(split, str):
      m = re.fullmatch(r"(train|dev|test)(\[.*\])?", split)
      if not m or not self.split_map.get(m.group(1)):
        raise DataError(f"tfds:{self.name}: no split {split!r} (has {', '.join(self.info.splits)})")
      names = self.split_map[m.group(1)]
      if m.group(2) and len(names) > 1:
        raise DataError(f"tfds:{self.name}: slicing {split!r} over {'+'.join(names)} is not supported")
      return "+".join(n + (m.group(2) or "") for n in names)
    if dataclasses.is_dataclass(split) and hasattr(split, "split"):  # tfds.split_for_jax_process's _EvenSplit
      return dataclasses.replace(split, split=self.tfds_split(split.split))
    raise DataError(f"tfds:{self.name}: unsupported split {split!r}")

  def _count(self, split: str) -> int:
    names, splits = self.split_map[split], self.builder.info.splits
    if all(n in splits for n in names):
      return sum(splits[n].num_examples for n in names)
    # A builder that lists no splits (a mocked one): count the examples.
    import tensorflow_datasets as tfds
    ds = self.builder.as_dataset(split="+".join(names), decoders={"image": tfds.decode.SkipDecoding()})
    n = int(ds.cardinality())
    return n if n >= 0 else sum(1 for _ in ds)

  def as_dataset(self, split, decoders=None, shuffle_files: bool = False, read_config=None):
    """The split's examples as {image, image/filename, captions [N] string}."""
    import tensorflow as tf

    decoders = {"image": decoders["image"]} if decoders and "image" in decoders else None
    ds = self.builder.as_dataset(split=self.tfds_split(split), decoders=decoders, shuffle_files=shuffle_files,
                                 read_config=read_config)
    cap, text, fname = self._captions, self._text, self._filename

    def convert(ex):
      captions = ex[cap][text] if text else ex[cap]
      if fname == "image/filename":
        filename = ex[fname]
      elif fname:
        filename = tf.strings.as_string(ex[fname])
      else:
        filename = tf.constant("")
      return {"image": ex["image"], "image/filename": filename, "captions": captions}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
