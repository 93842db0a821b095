"""Preparing a caption source (a Flickr8k folder, a Karpathy JSON) as a TFDS dataset, once, outside the source
folder; and reading a prepared split's captions back.

`prepare(data_dir)` scans a Flickr8k folder (`jaxcap.data.flickr8k`), `prepare_karpathy(images_root, json)` a
Karpathy JSON (`jaxcap.data.karpathy`); both write the same TFDS form (image, image/filename, captions) under
`default_tfds_dir(...)` with a JSON report of what was skipped, and return the builder; later calls reuse the
prepared copy. Images are stored as their file bytes when TF decodes them as-is, else as PNG. Which source a
config names is read in `jaxcap.data.dataset`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys

from PIL import Image

from jaxcap import paths
from jaxcap.data import DataError, flickr8k, karpathy

# Encodings tf.io.decode_image reads as-is; anything else is re-encoded to PNG at preparation.
_TF_NATIVE = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("BMP", "RGB")}


def _image_bytes(path: str) -> bytes:
  """The file's bytes when tf.io.decode_image reads them as they are, else an RGB PNG re-encoding."""
  with Image.open(path) as im:
    if (im.format, im.mode) in _TF_NATIVE and getattr(im, "n_frames", 1) == 1:
      with open(path, "rb") as f:
        return f.read()
    im.seek(0)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _builder_class(kind: str = "flickr8k"):
  """The TFDS builder class of a source `kind` ("flickr8k" | "karpathy"): one form, two names (the name is part
  of the prepared folder, which the feature cache key contains)."""
  import tensorflow_datasets as tfds

  from jaxcap.data.tf_setup import tf  # noqa: F401  (hide GPUs before TFDS touches TF)

  class _Captions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    # TFDS locates a builder's files through importlib resources, which fails for builders outside a
    # TFDS-style package; this one has no checksums or metadata files to find.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      from etils import epath
      return epath.Path(__file__)

    def _features(self):
      return tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "image/filename": tfds.features.Text(),
          "captions": tfds.features.Sequence(tfds.features.Text()),
      })

    def _split_generators(self, dl_manager):
      source = getattr(self, "source", None) or flickr8k.scan(str(dl_manager.manual_dir))
      self.source = source
      return {s: self._generate_examples(source, names) for s, names in source.splits.items() if names}

    def _generate_examples(self, source: flickr8k.Source, names):
      for name in names:
        yield name, {"image": _image_bytes(os.path.join(source.images_dir, name)),
                     "image/filename": name, "captions": source.captions[name]}

  class Flickr8k(_Captions, skip_registration=True):
    """Flickr8k captions (Hodosh et al. 2013) from a local folder in either download layout."""
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put Flickr8k in the manual dir in either layout: Images/ + captions.txt (Kaggle 'flickr8k') or "
        "Flicker8k_Dataset/ + Flickr8k_text/ (original Flickr8k_Dataset.zip + Flickr8k_text.zip).")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description="Flickr8k: 8,091 images with 5 captions each.",
          features=self._features(),
          homepage="https://hockenmaier.cs.illinois.edu/8k-pictures.html",
          citation="Hodosh, Young, Hockenmaier. Framing Image Description as a Ranking Task. JAIR 47, 2013.",
      )

  class KarpathyCaptions(_Captions, skip_registration=True):
    """A Karpathy caption_datasets JSON (dataset_{flickr8k,flickr30k,coco}.json) with its image folder."""
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Set data.data_dir to the image folder and data.karpathy_json to the JSON."

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description="Images and captions of a Karpathy split JSON (Karpathy & Fei-Fei 2015).",
          features=self._features(), homepage="https://cs.stanford.edu/people/karpathy/deepimagesent/",
          citation="Karpathy, Fei-Fei. Deep Visual-Semantic Alignments for Generating Image Descriptions. "
                   "CVPR 2015.")

  return {"flickr8k": Flickr8k, "karpathy": KarpathyCaptions}[kind]


def default_tfds_dir(data_dir: str, extra: str = "", slug: str = "") -> str:
  """Where the prepared copy of `data_dir` lives: one folder per source (folder, plus `extra`: the Karpathy
  JSON and split choice), never inside it."""
  root = os.environ.get("JAXCAP_TFDS_DIR") or os.path.join(paths.cache_root(), "tfds")
  absdir = os.path.abspath(os.path.expanduser(data_dir))
  slug = slug or os.path.basename(absdir.rstrip("/")) or "data"
  key = absdir + (f"|{extra}" if extra else "")
  return os.path.join(root, f"{slug}-{hashlib.sha1(key.encode()).hexdigest()[:10]}")


REPORT_FILE = "jaxcap_prepare_report.json"


def prepare(data_dir: str, tfds_dir: str | None = None, verbose: bool = True):
  """Prepares (once) and returns the TFDS builder for a Flickr8k folder."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  flickr8k.detect_layout(data_dir)  # a clear error before TFDS gets involved
  return _prepare(_builder_class("flickr8k"), tfds_dir or default_tfds_dir(data_dir), data_dir,
                  lambda: flickr8k.scan(data_dir), verbose)


def prepare_karpathy(images_root: str, karpathy_json: str = "", use_restval: bool = True,
                     tfds_dir: str | None = None, verbose: bool = True):
  """Prepares (once) and returns the TFDS builder for a Karpathy JSON and its image folder."""
  images_root = os.path.abspath(os.path.expanduser(images_root))
  if not os.path.isdir(images_root):
    raise DataError(f"{images_root}: data directory (the images of the Karpathy JSON) does not exist")
  path = karpathy.find_json(images_root, karpathy_json)
  slug = os.path.splitext(os.path.basename(path))[0]
  tfds_dir = tfds_dir or default_tfds_dir(images_root, f"{path}|restval={use_restval}", slug)
  return _prepare(_builder_class("karpathy"), tfds_dir, images_root,
                  lambda: karpathy.scan(images_root, path, use_restval), verbose)


def _prepare(cls, tfds_dir: str, source_dir: str, scan, verbose: bool):
  import tensorflow_datasets as tfds

  builder = cls(data_dir=tfds_dir)
  report_path = os.path.join(builder.data_dir, REPORT_FILE)
  if not os.path.exists(report_path):
    if verbose:
      print(f"Preparing {source_dir} -> {builder.data_dir} (once)", file=sys.stderr)
    builder.source = scan()
    report = builder.source.report()
    try:
      # TFDS writes into an incomplete.* dir and renames it when done (removing it on failure); the report,
      # written whole or not at all after that, is what marks the prepared copy finished.
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=source_dir))
      with open(report_path + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
      os.replace(report_path + ".tmp", report_path)
    except Exception as e:
      cause = paths.io_cause(e)
      if cause is None:
        raise
      raise DataError(f"{builder.data_dir}: cannot prepare the dataset ({cause[0]}); {cause[1]} and rerun "
                      f"(nothing half-written is kept)") from None
    if verbose:
      print_report(report, file=sys.stderr)
  return builder


def print_report(report: dict, file=None, max_lines: int = 20) -> None:
  """A `Source.report()` as a short table: split sizes, then up to `max_lines` skipped files and problems."""
  file = file or sys.stdout  # looked up at call time (tests capture sys.stdout)
  print(f"layout: {report['layout']}   splits: {report['split_source']}", file=file)
  for s in flickr8k.SPLITS:
    if s in report["images"]:
      print(f"  {s:5s}: {report['images'][s]:6d} images {report['captions'][s]:7d} captions", file=file)
  print(f"skipped images: {report['skipped_images']} {report['skipped_by_reason'] or ''}", file=file)
  for line in (report["skipped"] + report["problems"])[:max_lines]:
    print(f"  - {line}", file=file)
  more = len(report["skipped"]) + len(report["problems"]) - max_lines
  if more > 0:
    print(f"  ... and {more} more", file=file)


def split_captions(builder, split: str) -> tuple[list[str], dict[str, list[str]]]:
  """(file names in dataset order, name -> captions) of a prepared split, without decoding images."""
  import tensorflow_datasets as tfds
  ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False)
  names, caps = [], {}
  for ex in ds.as_numpy_iterator():
    name = ex["image/filename"].decode()
    names.append(name)
    caps[name] = [c.decode() for c in ex["captions"]]
  return names, caps
