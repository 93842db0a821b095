"""Flickr8k from a local folder, in either download layout, as a TFDS dataset.

Layouts (detected automatically; Kaggle wins when a folder has both):
  kaggle:   Images/*.jpg + captions.txt (CSV `image,caption`, quoted when a caption has commas)
  original: Flicker8k_Dataset/ or Flickr8k_Dataset/ + Flickr8k_text/Flickr8k.token.txt (`NAME.jpg#N<TAB>caption`)

Splits: the official `Flickr_8k.{train,dev,test}Images.txt` (looked for in `Flickr8k_text/`, then the folder
itself) when all three exist. Otherwise a generated split: usable images ordered by sha1 of their file name,
the first min(1000, n//8) are test, the next as many dev, the next min(6000, rest) train (a full 8,091-image
folder gets 6000/1000/1000 like the official split, but with other images).

Nothing here dies halfway on bad files: missing or undecodable images and malformed caption lines are skipped,
counted and reported (one line each); only a folder that cannot be used at all raises `DataError`.

Command: `python -m jaxcap.data.flickr8k --data_dir DIR` prints split sizes, skipped files, vocabulary size and
caption length percentiles (add `--prepare` to also write the TFDS dataset).
"""
from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import os
import sys

from PIL import Image

SPLITS = ("train", "dev", "test")
SPLIT_FILES = {s: f"Flickr_8k.{s}Images.txt" for s in SPLITS}
KAGGLE_IMAGES, KAGGLE_CAPTIONS = "Images", "captions.txt"
ORIGINAL_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset")  # the official zip misspells it
ORIGINAL_TEXT_DIR, ORIGINAL_TOKENS = "Flickr8k_text", "Flickr8k.token.txt"
# Encodings tf.io.decode_image reads as-is; anything else is re-encoded to PNG at preparation.
_TF_NATIVE = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("BMP", "RGB")}


class DataError(Exception):
  """A dataset folder that cannot be used; the message is one line naming the path and the problem."""


@dataclasses.dataclass
class Source:
  """What a Flickr8k folder holds, after every check."""
  data_dir: str
  layout: str                      # "kaggle" | "original"
  images_dir: str
  captions_file: str
  split_source: str                # "official" | "generated"
  captions: dict[str, list[str]]   # image file name -> raw captions, file order
  splits: dict[str, list[str]]     # split -> usable image names
  skipped: list[tuple[str, str]]   # (image name, reason) for images left out
  problems: list[str]              # one human-readable line per problem (malformed lines, unknown names)

  def report(self) -> dict:
    reasons = collections.Counter(r.split(":")[0] for _, r in self.skipped)
    return {
        "data_dir": self.data_dir, "layout": self.layout, "split_source": self.split_source,
        "images": {s: len(v) for s, v in self.splits.items()},
        "captions": {s: sum(len(self.captions[n]) for n in v) for s, v in self.splits.items()},
        "skipped_images": len(self.skipped), "skipped_by_reason": dict(reasons),
        "skipped": [f"{n}: {r}" for n, r in self.skipped], "problems": self.problems,
    }


def detect_layout(data_dir: str) -> tuple[str, str, str]:
  """(layout, images_dir, captions_file) or DataError saying what was looked for."""
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: data directory does not exist")
  kaggle_images = os.path.join(data_dir, KAGGLE_IMAGES)
  kaggle_captions = os.path.join(data_dir, KAGGLE_CAPTIONS)
  if os.path.isdir(kaggle_images) and os.path.isfile(kaggle_captions):
    return "kaggle", kaggle_images, kaggle_captions
  tokens = [p for p in (os.path.join(data_dir, ORIGINAL_TEXT_DIR, ORIGINAL_TOKENS),
                        os.path.join(data_dir, ORIGINAL_TOKENS)) if os.path.isfile(p)]
  images = [p for p in (os.path.join(data_dir, d) for d in ORIGINAL_IMAGE_DIRS) if os.path.isdir(p)]
  if tokens and images:
    return "original", images[0], tokens[0]
  found = sorted(os.listdir(data_dir))[:10]
  raise DataError(
      f"{data_dir}: no Flickr8k layout found: expected Images/ + captions.txt (Kaggle) or "
      f"Flicker8k_Dataset/ + Flickr8k_text/Flickr8k.token.txt (original); found {found or 'an empty folder'}")


def _read_text(path: str) -> str:
  with open(path, encoding="utf-8-sig", errors="replace") as f:
    text = f.read()
  if not text.strip():
    raise DataError(f"{path}: captions file is empty")
  return text


def parse_kaggle_captions(path: str) -> tuple[dict[str, list[str]], list[str]]:
  captions, problems = collections.defaultdict(list), []
  reader = csv.reader(io.StringIO(_read_text(path), newline=""))
  name = os.path.basename(path)
  for row in reader:
    line = reader.line_num
    if not row or all(not c.strip() for c in row):
      continue
    if line == 1 and [c.strip().lower() for c in row] == ["image", "caption"]:
      continue
    if len(row) != 2 or not row[0].strip() or not row[1].strip():
      problems.append(f"{name}:{line}: malformed captions line skipped (expected 'image,caption'): {row!r:.80}")
      continue
    captions[row[0].strip()].append(" ".join(row[1].split()))
  return dict(captions), problems


def parse_token_captions(path: str) -> tuple[dict[str, list[str]], list[str]]:
  captions, problems = collections.defaultdict(list), []
  name = os.path.basename(path)
  for line_no, line in enumerate(_read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    key, tab, caption = line.partition("\t")
    image, hash_, _ = key.strip().rpartition("#")
    if not tab or not hash_ or not image or not caption.strip():
      problems.append(f"{name}:{line_no}: malformed captions line skipped "
                      f"(expected 'IMAGE#N<TAB>caption'): {line!r:.80}")
      continue
    captions[image].append(" ".join(caption.split()))
  return dict(captions), problems


def check_image(path: str) -> str | None:
  """None if the file decodes as an image, else the reason (one line)."""
  if not os.path.exists(path):
    return "missing image file"
  try:
    if os.path.getsize(path) == 0:
      return "undecodable image: empty file"
    with Image.open(path) as im:
      im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; still reads every byte, so truncation shows
      im.load()
  except Exception as e:  # PIL raises many types for bad files; all mean the same to us
    return f"undecodable image: {type(e).__name__}: {str(e)[:80]}"
  return None


def _find_split_files(data_dir: str) -> dict[str, str] | None:
  for folder in (os.path.join(data_dir, ORIGINAL_TEXT_DIR), data_dir):
    paths = {s: os.path.join(folder, f) for s, f in SPLIT_FILES.items()}
    if all(os.path.isfile(p) for p in paths.values()):
      return paths
  return None


def generated_split(names: list[str]) -> dict[str, list[str]]:
  """Deterministic split of usable image names (see module docstring)."""
  order = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
  n_eval = min(1000, len(order) // 8)
  n_train = min(6000, len(order) - 2 * n_eval)
  return {"test": order[:n_eval], "dev": order[n_eval:2 * n_eval],
          "train": order[2 * n_eval:2 * n_eval + n_train]}


def scan(data_dir: str, check_images: bool = True, workers: int = 8) -> Source:
  """Reads captions and split files, checks every image; never raises for a single bad file."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  layout, images_dir, captions_file = detect_layout(data_dir)
  parse = parse_kaggle_captions if layout == "kaggle" else parse_token_captions
  captions, problems = parse(captions_file)
  if not captions:
    raise DataError(f"{captions_file}: no usable captions (every line malformed)")

  names = sorted(captions)
  paths = [os.path.join(images_dir, n) for n in names]
  if check_images:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes outside the GIL
      reasons = list(pool.map(check_image, paths))
  else:
    reasons = [None if os.path.exists(p) else "missing image file" for p in paths]
  skipped = [(n, r) for n, r in zip(names, reasons) if r]
  usable = {n for n, r in zip(names, reasons) if r is None}
  on_disk = set(os.listdir(images_dir))
  uncaptioned = sorted(n for n in on_disk - set(captions) if not n.startswith("."))
  if uncaptioned:
    problems.append(f"{images_dir}: {len(uncaptioned)} image file(s) have no captions and are unused, "
                    f"e.g. {uncaptioned[0]}")

  split_files = _find_split_files(data_dir)
  if split_files:
    split_source, splits = "official", {}
    for split, path in split_files.items():
      with open(path, encoding="utf-8-sig", errors="replace") as f:
        listed = [l.strip() for l in f.read().splitlines() if l.strip()]
      unknown = [n for n in listed if n not in captions and n not in on_disk]
      for n in unknown:
        problems.append(f"{os.path.basename(path)}: names unknown image {n!r}, skipped")
      # Listed images that exist but have no captions or were skipped are already counted above.
      splits[split] = [n for n in dict.fromkeys(listed) if n in usable]
  else:
    split_source, splits = "generated", generated_split(sorted(usable))
  return Source(data_dir, layout, images_dir, captions_file, split_source, captions, splits, skipped, problems)


# ---------------------------------------------------------------------------------------------------------
# TFDS builder
# ---------------------------------------------------------------------------------------------------------
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


def _builder_class():
  import tensorflow_datasets as tfds

  from jaxcap.data.tf_setup import tf  # noqa: F401  (hide GPUs before TFDS touches TF)

  class Flickr8k(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Flickr8k captions (Hodosh et al. 2013) from a local folder in either download layout."""

    VERSION = tfds.core.Version("1.0.0")

    # TFDS locates a builder's files through importlib resources, which fails for builders outside a
    # TFDS-style package; this one has no checksums or metadata files to find.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      from etils import epath
      return epath.Path(__file__)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put Flickr8k in the manual dir in either layout: Images/ + captions.txt (Kaggle 'flickr8k') or "
        "Flicker8k_Dataset/ + Flickr8k_text/ (original Flickr8k_Dataset.zip + Flickr8k_text.zip).")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description="Flickr8k: 8,091 images with 5 captions each.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3)),
              "image/filename": tfds.features.Text(),
              "captions": tfds.features.Sequence(tfds.features.Text()),
          }),
          homepage="https://hockenmaier.cs.illinois.edu/8k-pictures.html",
          citation="Hodosh, Young, Hockenmaier. Framing Image Description as a Ranking Task. JAIR 47, 2013.",
      )

    def _split_generators(self, dl_manager):
      source = getattr(self, "source", None) or scan(str(dl_manager.manual_dir))
      self.source = source
      return {s: self._generate_examples(source, names) for s, names in source.splits.items() if names}

    def _generate_examples(self, source: Source, names):
      for name in names:
        yield name, {"image": _image_bytes(os.path.join(source.images_dir, name)),
                     "image/filename": name, "captions": source.captions[name]}

  return Flickr8k


def default_tfds_dir(data_dir: str) -> str:
  """Where the prepared copy of `data_dir` lives: one folder per source folder, never inside it."""
  root = os.environ.get("JAXCAP_TFDS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxcap", "tfds")
  absdir = os.path.abspath(os.path.expanduser(data_dir))
  slug = os.path.basename(absdir.rstrip("/")) or "data"
  return os.path.join(root, f"{slug}-{hashlib.sha1(absdir.encode()).hexdigest()[:10]}")


REPORT_FILE = "jaxcap_prepare_report.json"


def prepare(data_dir: str, tfds_dir: str | None = None, verbose: bool = True):
  """Prepares (once) and returns the TFDS builder for a Flickr8k folder."""
  import tensorflow_datasets as tfds

  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  detect_layout(data_dir)  # a clear error before TFDS gets involved
  builder = _builder_class()(data_dir=tfds_dir or default_tfds_dir(data_dir))
  report_path = os.path.join(builder.data_dir, REPORT_FILE)
  if not os.path.exists(report_path):
    if verbose:
      print(f"Preparing {data_dir} -> {builder.data_dir} (once)", file=sys.stderr)
    builder.source = scan(data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_dir))
    report = builder.source.report()
    with open(report_path, "w") as f:
      json.dump(report, f, indent=1)
    if verbose:
      print_report(report, file=sys.stderr)
  return builder


def load_report(builder) -> dict:
  with open(os.path.join(builder.data_dir, REPORT_FILE)) as f:
    return json.load(f)


def print_report(report: dict, file=sys.stdout, max_lines: int = 20) -> None:
  print(f"layout: {report['layout']}   splits: {report['split_source']}", file=file)
  for s in SPLITS:
    if s in report["images"]:
      print(f"  {s:5s}: {report['images'][s]:6d} images {report['captions'][s]:7d} captions", file=file)
  print(f"skipped images: {report['skipped_images']} {report['skipped_by_reason'] or ''}", file=file)
  for line in (report["skipped"] + report["problems"])[:max_lines]:
    print(f"  - {line}", file=file)
  more = len(report["skipped"]) + len(report["problems"]) - max_lines
  if more > 0:
    print(f"  ... and {more} more", file=file)


def statistics(source: Source, min_count: int = 5) -> dict:
  import numpy as np

  from jaxcap.data.vocab import Vocab, normalize

  train_caps = [c for n in source.splits["train"] for c in source.captions[n]]
  vocab = Vocab.build(train_caps, min_count=min_count)
  lengths = np.array([len(normalize(c)) for c in train_caps]) if train_caps else np.zeros(1)
  pct = {f"p{p}": float(np.percentile(lengths, p)) for p in (5, 25, 50, 75, 95, 99, 100)}
  return {**source.report(), "vocab_size": len(vocab), "vocab_min_count": min_count,
          "train_caption_length_tokens": pct}


def _read_first_batches(builder, min_count: int) -> dict:
  """Reads one train and one eval batch through the real pipeline: proof the prepared data is usable."""
  from jaxcap.data import pipeline
  from jaxcap.data.preprocessing import LITE, Preprocessing
  from jaxcap.data.vocab import Vocab

  pp = Preprocessing(224, **LITE)
  train = builder.as_dataset(split="train").take(200)
  vocab = Vocab.build((c.decode() for ex in train.as_numpy_iterator() for c in ex["captions"]), min_count)
  tb = next(pipeline.train_batches(builder, vocab, batch_size=8, max_len=20, preprocessing=pp,
                                   shuffle_buffer=64))
  eb = next(pipeline.eval_batches(builder, split="test", batch_size=8, preprocessing=pp))
  return {"train": {k: list(v.shape) for k, v in tb.items()}, "eval": {k: list(v.shape) for k, v in eb.items()}}


def main(argv=None) -> int:
  import argparse

  p = argparse.ArgumentParser(prog="python -m jaxcap.data.flickr8k", description=__doc__.split("\n")[0])
  p.add_argument("--data_dir", required=True, help="Flickr8k folder (either layout)")
  p.add_argument("--min_count", type=int, default=5, help="vocabulary minimum word count")
  p.add_argument("--prepare", action="store_true", help="also prepare the TFDS dataset")
  p.add_argument("--tfds_dir", default=None, help="where the prepared dataset goes (default: ~/.cache/jaxcap)")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
  args = p.parse_args(argv)
  try:
    stats = statistics(scan(args.data_dir), args.min_count)
    if args.prepare:
      builder = prepare(args.data_dir, args.tfds_dir, verbose=False)
      stats["tfds_dir"] = builder.data_dir
      stats["first_batches"] = _read_first_batches(builder, args.min_count)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps({k: v for k, v in stats.items() if k != "skipped"}))
    return 0
  print_report(stats)
  print(f"vocabulary (train, min count {stats['vocab_min_count']}): {stats['vocab_size']} tokens incl. 4 specials")
  print("train caption length (tokens): " +
        " ".join(f"{k}={v:g}" for k, v in stats["train_caption_length_tokens"].items()))
  if "tfds_dir" in stats:
    print(f"prepared TFDS dataset: {stats['tfds_dir']}")
    print(f"first batches read back: {stats['first_batches']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
