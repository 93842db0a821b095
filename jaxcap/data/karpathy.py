"""Reading a Karpathy-format caption dataset (`dataset_{flickr8k,flickr30k,coco}.json` + an image folder).

The JSON is Karpathy's `caption_datasets` format: {"images": [{"filename", "filepath" (COCO only: "train2014" or
"val2014"), "split": "train" | "val" | "test" | "restval", "sentences": [{"raw", "tokens", ...}], ...}], ...}.
Images are read from <images_root>/<filepath>/<filename>. Splits map to jaxcap's: train (plus restval when
`use_restval`) -> train, val -> dev, test -> test. Captions are the `raw` sentences (whitespace collapsed);
jaxcap's normalizer turns them into tokens, as for Flickr8k (Karpathy's own `tokens` are not used).

The result is the same `flickr8k.Source` the Flickr8k folders give, so one TFDS builder prepares both. Quirks
are handled the same way: missing or undecodable images are counted, reported and skipped; a malformed entry is
reported with its index and skipped; only a file that is not this format at all raises `DataError` (one line).

    python -m jaxcap.data.karpathy --from_flickr8k DIR --out dataset_flickr8k.json   # write one from Flickr8k
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import gc
import glob
import json
import os
import sys

from jaxcap.data import DataError, flickr8k

# Karpathy split name -> jaxcap split ("restval" is added to train when asked for).
SPLIT_MAP = {"train": "train", "val": "dev", "test": "test", "restval": "train"}


def find_json(images_root: str, karpathy_json: str = "") -> str:
  """The JSON a config names, or the single `dataset_*.json` in the image folder."""
  if karpathy_json:
    path = os.path.abspath(os.path.expanduser(karpathy_json))
    if not os.path.isfile(path):
      raise DataError(f"{path}: data.karpathy_json does not exist")
    return path
  found = sorted(glob.glob(os.path.join(images_root, "dataset_*.json")))
  if len(found) != 1:
    raise DataError(f"{images_root}: set data.karpathy_json (found {len(found)} dataset_*.json files here, "
                    f"need exactly one)")
  return found[0]


@contextlib.contextmanager
def _no_gc():
  """Millions of small objects are made: Python's cyclic GC would walk them over and over (COCO's JSON parses
  in 10 s with it, 3-4 s without); nothing here makes reference cycles."""
  was_enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if was_enabled:
      gc.enable()


def _load(path: str) -> list:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not a JSON file ({type(e).__name__}: {str(e)[:80]})") from None
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
    raise DataError(f"{path}: not a Karpathy caption_datasets JSON: expected an object with an 'images' list, "
                    f"found {keys}")
  return data["images"]


def parse(path: str, use_restval: bool = True) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str],
                                                       dict[str, int]]:
  """(captions: name -> raw captions, splits: jaxcap split -> names in file order, problems, counts of
  Karpathy splits) of a Karpathy JSON; name = "<filepath>/<filename>" (or the filename when no filepath)."""
  with _no_gc():
    return _parse(path, use_restval)


def _parse(path: str, use_restval: bool):
  entries = _load(path)
  base = os.path.basename(path)
  captions: dict[str, list[str]] = {}
  splits: dict[str, list[str]] = {s: [] for s in flickr8k.SPLITS}
  problems, counts = [], collections.Counter()
  for i, e in enumerate(entries):
    where = f"{base}: images[{i}]"
    if not isinstance(e, dict) or not isinstance(e.get("filename"), str) or not e["filename"].strip():
      problems.append(f"{where}: malformed entry skipped (no 'filename')")
      continue
    name = e["filename"].strip()
    if e.get("filepath"):
      if not isinstance(e["filepath"], str):
        problems.append(f"{where}: malformed entry skipped ('filepath' is not a string)")
        continue
      name = f"{e['filepath'].strip('/')}/{name}"
    split = e.get("split")
    if split not in SPLIT_MAP:
      problems.append(f"{where}: unknown split {split!r} for {name} (expected train, val, test or restval), "
                      f"skipped")
      continue
    sentences = e.get("sentences")
    if not isinstance(sentences, list):
      problems.append(f"{where}: malformed entry skipped ({name}: no 'sentences' list)")
      continue
    raws = [" ".join(s["raw"].split()) for s in sentences if isinstance(s, dict) and isinstance(s.get("raw"), str)]
    raws = [r for r in raws if r]
    if len(raws) != len(sentences):
      problems.append(f"{where}: {len(sentences) - len(raws)} sentence(s) of {name} without a 'raw' text, skipped")
    if not raws:
      problems.append(f"{where}: {name} has no usable sentences, skipped")
      continue
    if name in captions:
      problems.append(f"{where}: {name} listed again, skipped")
      continue
    counts[split] += 1
    if split == "restval" and not use_restval:
      continue
    captions[name] = raws
    splits[SPLIT_MAP[split]].append(name)
  return captions, splits, problems, dict(counts)


def scan(images_root: str, karpathy_json: str = "", use_restval: bool = True, check_images: bool = True,
         workers: int = 8) -> flickr8k.Source:
  """The `Source` of a Karpathy JSON and its image folder; never raises for a single bad image or entry."""
  images_root = os.path.abspath(os.path.expanduser(images_root))
  if not os.path.isdir(images_root):
    raise DataError(f"{images_root}: data directory (the images of the Karpathy JSON) does not exist")
  path = find_json(images_root, karpathy_json)
  captions, splits, problems, counts = parse(path, use_restval)
  if not captions:
    raise DataError(f"{path}: no usable images (every entry malformed or in an unknown split)")
  names = [n for s in flickr8k.SPLITS for n in splits[s]]
  paths = [os.path.join(images_root, n) for n in names]
  if check_images:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes outside the GIL
      reasons = list(pool.map(flickr8k.check_image, paths, chunksize=64))
  else:
    reasons = [None if os.path.exists(p) else "missing image file" for p in paths]
  bad = {n: r for n, r in zip(names, reasons) if r}
  splits = {s: [n for n in v if n not in bad] for s, v in splits.items()}
  restval = counts.get("restval", 0)
  how = ("karpathy" + (f", restval ({restval} images) in train" if use_restval and restval else "")
         + (f", restval ({restval} images) unused" if restval and not use_restval else ""))
  return flickr8k.Source(images_root, "karpathy", images_root, path, how, captions, splits, sorted(bad.items()),
                         problems)


def from_source(source: flickr8k.Source, dataset: str = "flickr8k") -> dict:
  """A Karpathy-format dict of a scanned folder's splits (train, dev -> val, test), captions as `raw`."""
  from jaxcap.data.vocab import normalize

  back = {"train": "train", "dev": "val", "test": "test"}
  images, sentid = [], 0
  for split in flickr8k.SPLITS:
    for name in source.splits[split]:
      sentences = []
      for raw in source.captions[name]:
        sentences.append({"tokens": normalize(raw), "raw": raw, "imgid": len(images), "sentid": sentid})
        sentid += 1
      images.append({"filename": name, "imgid": len(images), "split": back[split], "sentences": sentences,
                     "sentids": [s["sentid"] for s in sentences]})
  return {"images": images, "dataset": dataset}


def main(argv=None) -> int:
  import argparse

  p = argparse.ArgumentParser(prog="python -m jaxcap.data.karpathy", description=__doc__.split("\n")[0])
  p.add_argument("--from_flickr8k", required=True, help="a Flickr8k folder (either layout, official split)")
  p.add_argument("--out", required=True, help="where the dataset_flickr8k.json goes")
  a = p.parse_args(argv)
  try:
    src = flickr8k.scan(a.from_flickr8k, check_images=False)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  with open(a.out, "w") as f:
    json.dump(from_source(src), f)
  print(f"{a.out}: " + ", ".join(f"{s} {len(v)} images" for s, v in src.splits.items())
        + f" ({src.split_source} split); images are in {src.images_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
