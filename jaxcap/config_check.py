"""Config validation, before any work: every field with a range or a set of choices, checked in one place.

`check(config)` raises `ConfigError` whose message is one line naming the field, the value and what is
allowed, e.g. `config train.batch_size=0 is not allowed: must be an integer >= 1`. The trainer calls it first
thing, so a bad value never starts data preparation or a run that "succeeds" with BLEU 0. The allowed values
are the ones `configs/default.py` documents.
"""
from __future__ import annotations

import math
from typing import Callable


class ConfigError(ValueError):
  """A config value outside what the code can use; the message is one line."""


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int) -> tuple[Callable, str]:
  return (lambda v: _is_int(v) and v >= lo), f"an integer >= {lo}"


def number(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> tuple[Callable, str]:
  def ok(v):
    if not _is_num(v):
      return False
    above = v > lo if lo_open else v >= lo
    below = hi is None or (v < hi if hi_open else v <= hi)
    return above and below
  if hi is None:
    what = f"a finite number {'>' if lo_open else '>='} {lo:g}"
  else:
    what = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  return ok, what


def one_of(*choices) -> tuple[Callable, str]:
  return (lambda v: v in choices), "one of " + ", ".join(map(str, choices))


BOOL = ((lambda v: isinstance(v, bool)), "true or false")
TEXT = ((lambda v: isinstance(v, str)), "a string")


def rules() -> dict[str, tuple[Callable, str]]:
  """field -> (predicate, what is allowed). Choices come from the code that uses them."""
  from jaxcap import feeds
  from jaxcap.models.decoder import MODES
  from jaxcap.models.encoders import NAMES
  return {
      "seed": integer(0),
      "data.data_dir": TEXT,
      "data.synthetic": BOOL,
      "data.synthetic_dir": TEXT,
      # The generated split gives n // 8 images to dev and to test: at least one each.
      "data.synthetic_num_images": integer(8),
      "data.synthetic_size": integer(16),
      "data.tfds_dir": TEXT,
      # <start>, at least one word, <end>.
      "data.max_len": (integer(3)[0], "an integer >= 3 (<start>, a word and <end>)"),
      "data.min_count": integer(1),
      "data.feature_cache_dir": TEXT,
      "model.encoder": one_of(*NAMES),
      "model.pretrained": TEXT,
      "model.image_size": integer(16),
      "model.decoder_mode": one_of(*MODES),
      "model.embed_dim": integer(1),
      "model.hidden_dim": integer(1),
      "model.attention_dim": integer(1),
      "model.dropout": number(0, 1, hi_open=True),
      "model.embed_dropout": number(0, 1, hi_open=True),
      "model.deep_output": BOOL,
      "model.dtype": one_of("float32", "bfloat16"),
      "model.depthwise_impl": one_of("auto", "shifted", "conv"),
      "model.attention_backward": one_of("auto", "manual", "autodiff"),
      "train.regime": one_of(*feeds.FEEDS),
      "train.batch_size": integer(1),
      "train.num_epochs": integer(0),
      "train.num_steps": integer(0),
      "train.learning_rate": number(0, lo_open=True),
      "train.warmup_steps": integer(0),
      "train.decay_steps": integer(0),
      "train.final_lr_fraction": number(0, 1),
      "train.weight_decay": number(0),
      "train.grad_clip": number(0, lo_open=True),
      "train.label_smoothing": number(0, 1, hi_open=True),
      "train.attention_penalty": number(0),
      "train.length_bucketing": BOOL,
      "train.encoder_learning_rate": number(0),
      "train.finetune_from_step": integer(0),
      "train.augment": BOOL,
      "train.image_feed": one_of("auto", "decoded", "stream"),
      "train.log_every": integer(1),
      "train.eval_every": integer(0),
      "train.checkpoint_every": integer(0),
      "train.keep_checkpoints": integer(1),
      "train.eval_num_images": integer(0),
      "train.decode_max_len": integer(1),
      "train.final_test_eval": BOOL,
      "train.eval_batch_size": integer(1),
      "train.init_from": TEXT,
      "train.select_metric": one_of("bleu4", "cider"),
      "train.scst_samples": (integer(2)[0],
                             "an integer >= 2 (the default baseline is the mean reward of an image's other samples)"),
      "train.scst_temperature": number(0, lo_open=True),
      "train.scst_baseline": one_of("others", "greedy"),
      "train.feature_store": one_of("auto", "memory", "stream"),
      "train.feature_memory_gb": number(0),
      "train.feed_placement": one_of("auto", "device", "host"),
      "train.device_memory_gb": number(0),
      "train.steps_per_dispatch": integer(1),
      "data.dataset": ((lambda v: isinstance(v, str) and (v in ("flickr8k", "karpathy") or
                                                           (v.startswith("tfds:") and len(v) > 5))),
                       "flickr8k, karpathy or tfds:<name>"),
      "data.karpathy_json": TEXT,
      "data.use_restval": BOOL,
  }


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def check(config, device_count: int | None = None) -> None:
  """Raises ConfigError for the first field outside its range or choices (fields a config lacks are left to
  their users' defaults). `device_count`: the global batch must split evenly over that many devices."""
  problems = []
  for field, (ok, what) in rules().items():
    value = _get(config, field)
    if value is not _MISSING and not ok(value):
      problems.append(f"{field}={value!r} is not allowed: must be {what}")
  t = config.train
  if not problems and t.num_steps == 0 and t.num_epochs == 0:
    problems.append("train.num_steps=0 and train.num_epochs=0: set one of them to a positive number")
  if not problems and device_count and t.batch_size % device_count:
    problems.append(f"train.batch_size={t.batch_size} is not allowed: must be divisible by the {device_count} "
                    f"devices")
  k = t.get("steps_per_dispatch", 1)
  for field in ("log_every", "eval_every", "checkpoint_every"):
    if not problems and field in t and t[field] % k:
      problems.append(f"train.{field}={t[field]} is not allowed: must be a multiple of train.steps_per_dispatch={k}"
                      f" (intervals fall on dispatch ends)")
  if problems:
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    raise ConfigError(f"config {problems[0]}{more}")
