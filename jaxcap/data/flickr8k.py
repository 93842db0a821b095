"""Reading a local Flickr8k folder in either download layout: captions, split files, quirks.

Layouts (detected automatically; Kaggle wins when a folder has both):
  kaggle:   Images/*.jpg + captions.txt (CSV `image,caption`, quoted when a caption has commas)
  original: Flicker8k_Dataset/ or Flickr8k_Dataset/ + Flickr8k_text/Flickr8k.token.txt (`NAME.jpg#N<TAB>caption`)

Splits: the official `Flickr_8k.{train,dev,test}Images.txt` (looked for in `Flickr8k_text/`, then the folder
itself) when all three exist. Otherwise a generated split: usable images ordered by sha1 of their file name,
the first min(1000, n//8) are test, the next as many dev, the next min(6000, rest) train (a full 8,091-image
folder gets 6000/1000/1000 like the official split, but with other images).

Nothing here dies halfway on bad files: missing or undecodable images and malformed caption lines are skipped,
counted and reported (one line each); only a folder that cannot be used at all raises `DataError`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import os

from PIL import Image

from jaxcap.data import DataError

SPLITS = ("train", "dev", "test")
SPLIT_FILES = {s: f"Flickr_8k.{s}Images.txt" for s in SPLITS}
KAGGLE_IMAGES, KAGGLE_CAPTIONS = "Images", "captions.txt"
ORIGINAL_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset")  # the official zip misspells it
ORIGINAL_TEXT_DIR, ORIGINAL_TOKENS = "Flickr8k_text", "Flickr8k.token.txt"


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

