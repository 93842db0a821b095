"""Compile a run's programs for a TPU pod on this machine, before renting it: `python -m jaxcap.aot`.

    pip install --target ~/.cache/jaxcap/libtpu -r requirements-tpu-aot.txt      # once: the TPU compiler
    python -m jaxcap.aot --config configs/flickr8k_lite0.py --config.train.batch_size=1024 \
        --config.model.dtype=bfloat16 --topology v5e:2x2 --json aot.json --markdown aot.md

The same config files and overrides as train.py (no data is read: `--vocab_size` and `--train_images` stand in
for what the data would decide). For each topology it compiles the config's train dispatch (its regime, K steps
per call, the trainer's shardings and feed), validation's greedy decoding and beam search over 1,000 images,
with the TPU compiler and no TPU (`jax.experimental.topologies`, compile-only devices), and reports per chip:
memory against HBM, FLOPs and bytes per step, FLOP per byte against the chip's balance point, a roofline bound,
the collectives and the host transfers (`jaxcap.aot.report`). The compiler's figures and a roofline: not
measured times.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

import configs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", os.path.join(os.path.dirname(configs.__file__), "quickstart.py"),
                                "Config file, as train.py's; fields overridable as --config.FIELD=v")
flags.DEFINE_multi_string("topology", ["v5e:2x2"], "TPU topology names (v5e:2x2, v5e:4x4 ... v5e:16x16, "
                          "v5p:2x2x1, v6e:2x2); repeat the flag for several")
flags.DEFINE_list("programs", ["train", "validate", "beam"], "Which programs: train, validate, beam")
flags.DEFINE_integer("vocab_size", 2535, "Vocabulary size (Flickr8k's at the shipped min_count)")
flags.DEFINE_integer("train_images", 6000, "Train images (Flickr8k: 6,000), each with --captions_per_image")
flags.DEFINE_integer("captions_per_image", 5, "Captions per train image")
flags.DEFINE_integer("beam_images", 1000, "Images beam search decodes in one call")
flags.DEFINE_integer("beam_size", 3, "Beam width")
flags.DEFINE_integer("per_chip_batch", 0, "If set, train.batch_size is this times each topology's chips (a "
                     "scaling study at a fixed per-chip batch)")
flags.DEFINE_string("json", None, "Write every figure here (one JSON object)")
flags.DEFINE_string("markdown", None, "Write the table here (Markdown)")


def main(argv) -> int:
  del argv
  import jax
  from jaxcap import logs
  from jaxcap.aot import compile_only

  logs.install()
  # A persistent compilation cache cannot load executables for devices this process does not have.
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    rows = compile_only.run(FLAGS.config, FLAGS.topology, FLAGS.programs, _sizes(), log=_log,
                            per_chip_batch=FLAGS.per_chip_batch)
  except (ValueError, compile_only.AotError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from jaxcap.aot import report
  table = report.markdown(rows)
  print(table)
  for path, text in ((FLAGS.json, json.dumps({"rows": rows, "time": time.strftime("%Y-%m-%d %H:%M")}, indent=1)),
                     (FLAGS.markdown, table)):
    if path:
      from jaxcap import fileio
      fileio.write_atomic(path, text)
  return 0


def _sizes():
  from jaxcap.aot.programs import Sizes
  return Sizes(FLAGS.vocab_size, FLAGS.train_images, FLAGS.captions_per_image, FLAGS.beam_images, FLAGS.beam_size)


def _log(*a):
  print(*a, file=sys.stderr, flush=True)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
