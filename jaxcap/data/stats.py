"""Statistics of a captioning dataset, as a command; with --prepare, also prepares it and reads batches back.

    python -m jaxcap.data.stats --data_dir DIR [--prepare] [--tfds_dir D] [--json] [--min_count N]    # Flickr8k
    python -m jaxcap.data.stats --dataset karpathy --data_dir IMAGES [--karpathy_json J] [--no_restval]
    python -m jaxcap.data.stats --dataset tfds:coco_captions [--tfds_dir TFDS_DATA_DIR]

Prints split sizes, skipped files, vocabulary size and train caption length percentiles; `--prepare` also
writes the TFDS dataset (`jaxcap.data.tfds_builder.prepare`) and reads one train and one eval batch through
the real pipeline. Exit status 2, with one line on stderr, for a folder that cannot be used.
"""
from __future__ import annotations

import json
import sys

from jaxcap.data import DataError, dataset, flickr8k, tfds_builder


def statistics(source: flickr8k.Source, min_count: int = 5) -> dict:
  """`source.report()` plus the train vocabulary size and train caption length percentiles (tokens)."""
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
  from jaxcap.data.preprocessing import Preprocessing
  from jaxcap.data.vocab import Vocab

  pp = Preprocessing(224, (0.0,) * 3, (1.0,) * 3)  # only the size matters: images leave the pipeline as uint8
  train = builder.as_dataset(split="train").take(200)
  vocab = Vocab.build((c.decode() for ex in train.as_numpy_iterator() for c in ex["captions"]), min_count)
  tb = next(pipeline.train_batches(builder, vocab, batch_size=8, max_len=20, preprocessing=pp,
                                   shuffle_buffer=64))
  eb = next(pipeline.eval_batches(builder, split="test", batch_size=8, preprocessing=pp))
  return {"train": {k: list(v.shape) for k, v in tb.items()}, "eval": {k: list(v.shape) for k, v in eb.items()}}


def main(argv=None) -> int:
  import argparse

  p = argparse.ArgumentParser(prog="python -m jaxcap.data.stats", description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="flickr8k", help="flickr8k | karpathy | tfds:<name> (as data.dataset)")
  p.add_argument("--data_dir", default="", help="Flickr8k folder (either layout), or the Karpathy JSON's images")
  p.add_argument("--karpathy_json", default="", help="Karpathy JSON (default: the dataset_*.json in --data_dir)")
  p.add_argument("--no_restval", action="store_true", help="leave Karpathy's restval images out of train")
  p.add_argument("--min_count", type=int, default=5, help="vocabulary minimum word count")
  p.add_argument("--prepare", action="store_true", help="also prepare the TFDS dataset")
  p.add_argument("--tfds_dir", default="", help="where the prepared dataset goes (default: ~/.cache/jaxcap); "
                 "for tfds:<name>, TFDS's data_dir")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
  args = p.parse_args(argv)
  import ml_collections
  data = ml_collections.ConfigDict({"dataset": args.dataset, "data_dir": args.data_dir, "synthetic": False,
                                    "karpathy_json": args.karpathy_json, "use_restval": not args.no_restval,
                                    "tfds_dir": args.tfds_dir})
  try:
    if not args.data_dir and not args.dataset.startswith("tfds:"):
      raise DataError(f"--data_dir is required for --dataset {args.dataset}")
    stats = statistics(dataset.source(data), args.min_count)
    if args.prepare:
      builder = dataset.prepare(data, verbose=False)
      stats["tfds_dir"] = builder.data_dir
      stats["first_batches"] = _read_first_batches(builder, args.min_count)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps({k: v for k, v in stats.items() if k != "skipped"}))
    return 0
  tfds_builder.print_report(stats)
  print(f"vocabulary (train, min count {stats['vocab_min_count']}): {stats['vocab_size']} tokens incl. 4 specials")
  print("train caption length (tokens): " +
        " ".join(f"{k}={v:g}" for k, v in stats["train_caption_length_tokens"].items()))
  if "tfds_dir" in stats:
    print(f"prepared TFDS dataset: {stats['tfds_dir']}")
    print(f"first batches read back: {stats['first_batches']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
