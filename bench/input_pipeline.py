"""Images/s of the train tf.data pipeline (decode, resize, tokenize, shuffle, batch) on real data.

    python -m bench.input_pipeline --data_dir /path/to/flickr8k [--batch_size 64 --size 224 --repeats 5]

Prints one JSON object. Not a test: figures depend on the machine.
"""
import argparse
import os

from bench.common import emit, machine, timeit
from jaxcap.data import flickr8k, pipeline, tfds_builder
from jaxcap.data import vocab as V
from jaxcap.data.preprocessing import LITE, Preprocessing


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data_dir", default=os.environ.get("JAXCAP_FLICKR8K_DIR"),
                 help="the Flickr8k folder (default: $JAXCAP_FLICKR8K_DIR)")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batches", type=int, default=30, help="batches per timed run")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--augment", action="store_true")
  a = p.parse_args()
  if not a.data_dir:
    p.error("--data_dir (or $JAXCAP_FLICKR8K_DIR): the Flickr8k folder")
  builder = tfds_builder.prepare(a.data_dir)
  src = flickr8k.scan(a.data_dir, check_images=False)
  vocab = V.Vocab.build(c for n in src.splits["train"] for c in src.captions[n])
  it = pipeline.train_batches(builder, vocab, batch_size=a.batch_size, max_len=24,
                              preprocessing=Preprocessing(a.size, **LITE), augment=a.augment)
  r = timeit(lambda: [next(it) for _ in range(a.batches)], repeats=a.repeats, warmup=1)
  images = a.batches * a.batch_size
  emit({"bench": "input_pipeline", "images_per_s_median": images / r["median_s"],
        "images_per_s_min": images / r["max_s"], "images_per_s_max": images / r["min_s"],
        "batch_size": a.batch_size, "size": a.size, "augment": a.augment, "images_per_run": images,
        **r, "machine": machine()})


if __name__ == "__main__":
  main()
