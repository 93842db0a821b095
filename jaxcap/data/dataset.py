"""What a config's `data` section names, read in one place: `data.dataset` = "flickr8k" | "karpathy" | "tfds:<name>".

    flickr8k      data.data_dir is a Flickr8k folder in either download layout (`jaxcap.data.flickr8k`)
    karpathy      data.data_dir is an image folder, data.karpathy_json its Karpathy split JSON ("" = the one
                  dataset_*.json in data_dir) (`jaxcap.data.karpathy`)
    tfds:<name>   a TFDS captioning dataset, e.g. tfds:coco_captions (`jaxcap.data.tfds_adapter`); data.tfds_dir
                  is TFDS's data_dir there ("" = TFDS's default, ~/tensorflow_datasets)

`prepare` gives the builder that training, evaluation and the pipelines read (`as_dataset`, `info.splits`,
`data_dir`), `source` the scanned `Source` the statistics command prints, `sample_images` a few test photos for
the app. Everything else (train_lib, jaxcap.evaluate, jaxcap.data.stats, serve_app) calls these and never asks
which kind it has. `data.use_restval` adds Karpathy's restval images to train (COCO: 82,783 + 30,504).
"""
from __future__ import annotations

import dataclasses
import os

from jaxcap.data import DataError, resolve_data_dir

KINDS = ("flickr8k", "karpathy", "tfds:<name>")


@dataclasses.dataclass(frozen=True)
class Spec:
  """A config's data section, read once (fields that old checkpoints' configs lack get their defaults)."""
  kind: str            # "flickr8k" | "karpathy" | "tfds"
  tfds_name: str       # for kind "tfds"
  karpathy_json: str
  use_restval: bool
  tfds_dir: str


def spec(data_config) -> Spec:
  get = data_config.get
  name = get("dataset", "flickr8k") or "flickr8k"
  if get("synthetic", False):
    name = "flickr8k"  # the synthetic dataset is written in the Flickr8k Kaggle layout
  if name in ("flickr8k", "karpathy"):
    kind, tfds_name = name, ""
  elif name.startswith("tfds:") and name[5:].strip():
    kind, tfds_name = "tfds", name[5:].strip()
  else:
    raise DataError(f"data.dataset={name!r}: expected one of {', '.join(KINDS)} (e.g. tfds:coco_captions)")
  return Spec(kind, tfds_name, get("karpathy_json", "") or "", bool(get("use_restval", True)),
              get("tfds_dir", "") or "")


def describe(data_config) -> str:
  """One phrase naming the dataset, for logs and messages."""
  s = spec(data_config)
  if s.kind == "tfds":
    return f"tfds:{s.tfds_name}"
  where = data_config.get("data_dir", "") or "(synthetic)"
  return f"{where} (Karpathy JSON {s.karpathy_json or 'in that folder'})" if s.kind == "karpathy" else where


def prepare(data_config, verbose: bool = True):
  """The prepared dataset a config names (prepared once, then reused)."""
  from jaxcap.data import tfds_adapter, tfds_builder

  s = spec(data_config)
  if s.kind == "tfds":
    return tfds_adapter.TfdsCaptions(s.tfds_name, s.tfds_dir, s.use_restval, verbose=verbose)
  data_dir = resolve_data_dir(data_config)
  if s.kind == "karpathy":
    return tfds_builder.prepare_karpathy(data_dir, s.karpathy_json, s.use_restval, s.tfds_dir or None, verbose)
  return tfds_builder.prepare(data_dir, s.tfds_dir or None, verbose)


def source(data_config, check_images: bool = True):
  """The scanned `flickr8k.Source` (splits, captions, skipped files); for tfds:<name>, read from the prepared
  dataset (TFDS has already dropped what it could not use)."""
  from jaxcap.data import flickr8k, karpathy, tfds_builder

  s = spec(data_config)
  if s.kind == "flickr8k":
    return flickr8k.scan(resolve_data_dir(data_config), check_images)
  if s.kind == "karpathy":
    return karpathy.scan(resolve_data_dir(data_config), s.karpathy_json, s.use_restval, check_images)
  builder = prepare(data_config, verbose=False)
  splits, captions = {}, {}
  for split in builder.info.splits:
    names, caps = tfds_builder.split_captions(builder, split)
    splits[split] = names
    captions.update(caps)
  how = " / ".join(f"{'+'.join(v)} -> {k}" for k, v in builder.split_map.items() if v)
  return flickr8k.Source(builder.builder.data_dir, f"tfds:{s.tfds_name}", "", "", how, captions, splits, [], [])


def sample_images(data_config, n: int) -> list[tuple[str, bytes]]:
  """(name, encoded bytes) of the first `n` test (else dev) images, [] when the dataset is not on this machine."""
  try:
    if spec(data_config).kind != "tfds":
      src = source(data_config, check_images=False)
      names = (src.splits.get("test") or src.splits.get("dev") or [])[:n]
      out = []
      for name in names:
        with open(os.path.join(src.images_dir, name), "rb") as f:
          out.append((name, f.read()))
      return out
    return _tfds_samples(spec(data_config), n)
  except (DataError, OSError):
    return []


def _tfds_samples(s: Spec, n: int) -> list[tuple[str, bytes]]:
  import tensorflow_datasets as tfds

  from jaxcap.data import tfds_adapter
  try:  # never downloads: a dataset that is not prepared here has no samples
    builder = tfds_adapter.TfdsCaptions(s.tfds_name, s.tfds_dir, s.use_restval, prepare=False, verbose=False)
    split = "test" if "test" in builder.info.splits else "dev"
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()}).take(n)
    return [(ex["image/filename"].decode() or f"{split}_{i}", ex["image"]) for i, ex in enumerate(tfds.as_numpy(ds))]
  except Exception:  # noqa: BLE001  (TFDS raises assorted types for a dataset it has not prepared)
    return []
