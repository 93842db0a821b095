"""Config validation, before any work: every field with a range or a set of choices, checked in one place.

`check(config)` raises `ConfigError` whose message is one line naming the field, the value and what is
allowed, e.g. `config train.batch_size=0 is not allowed: must be an integer >= 1`. The trainer calls it first
thing, so a bad value never starts data preparation or a run that "succeeds" with BLEU 0. The allowed values
are the ones `configs/default.py` documents. It also refuses:
  - a field the run would ignore, set away from its unused value (`ignored`), e.g. data.data_dir with
    data.synthetic=True, or train.augment outside the finetune regime;
  - a dataset folder that is not set or not there (`missing_folders`), naming the flag and the environment
    variable the shipped configs read it from.
`check_data(config, train, dev)` refuses what the data cannot satisfy (a batch larger than the train split, more
dev images than it has); the trainer calls it once the split sizes are known, before any training work.
"""
from __future__ import annotations

import math
import os
from typing import Callable

# The values of train.regime (the feeds, `jaxcap.feeds.FEEDS`, have one class for each).
REGIMES = ("cached", "finetune", "self_critical", "top")
# The environment variables the shipped configs read data.data_dir from: configs/default.py (and every Flickr8k
# config after it) and configs/flickr30k_lite0.py.
FLICKR8K_DIR_VARIABLE = "JAXCAP_FLICKR8K_DIR"
FLICKR30K_DIR_VARIABLE = "JAXCAP_FLICKR30K_DIR"


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
  from jaxcap.models.decoder import BACKWARDS, MODES
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
      "model.input_size": (lambda v: _is_int(v) and (v == 0 or v >= 32),
                           "0 (the encoder's own resolution) or an integer >= 32"),
      "model.decoder_mode": one_of(*MODES),
      "model.embed_dim": integer(1),
      "model.hidden_dim": integer(1),
      "model.attention_dim": integer(1),
      "model.dropout": number(0, 1, hi_open=True),
      "model.embed_dropout": number(0, 1, hi_open=True),
      "model.deep_output": BOOL,
      "model.dtype": one_of("float32", "bfloat16"),
      "model.depthwise_impl": one_of("auto", "shifted", "conv"),
      "model.attention_backward": one_of(*BACKWARDS),
      "train.regime": one_of(*REGIMES),
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
      "train.captions_per_image": integer(0),
      "train.top_stages": integer(1),
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
      "train.transfer_guard": one_of("allow", "log", "disallow", "log_explicit", "disallow_explicit"),
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


def _kind(data) -> str:
  """What data.data_dir is for: "synthetic" (generated, no folder), else the dataset's kind as
  `jaxcap.data.dataset` reads it: "flickr8k", "karpathy" or "tfds" (data.dataset was checked by then)."""
  from jaxcap.data import dataset
  return "synthetic" if data.get("synthetic", False) else dataset.spec(data).kind


def ignored(config) -> list[str]:
  """A line for each field the run would not read, set away from its unused value (configs/default.py's)."""
  d, m, t = config.data, config.model, config.train
  kind, regime = _kind(d), t.regime
  not_finetune = f"only train.regime=finetune reads images and trains the encoder (this run: {regime!r})"
  not_scst = f"only train.regime=self_critical samples captions (this run: {regime!r})"
  not_synthetic = "only data.synthetic=True generates data (this run reads data.data_dir)"
  # (field, its unused value, whether this run ignores it, why)
  table = [
      ("data.data_dir", "", kind == "synthetic", "data.synthetic=True trains on generated shapes; to train on a "
       "folder use a dataset config, e.g. --config configs/flickr8k_lite0.py --config.data.data_dir=DIR"),
      ("data.data_dir", "", kind == "tfds", f"data.dataset={d.get('dataset')!r} is read through TFDS, whose "
       "folder is data.tfds_dir"),
      ("data.dataset", "flickr8k", kind == "synthetic", "data.synthetic=True generates a Flickr8k folder; set "
       "--config.data.synthetic=False to read this dataset"),
      ("data.karpathy_json", "", kind != "karpathy", "only data.dataset=karpathy reads it"),
      ("data.use_restval", True, kind in ("flickr8k", "synthetic"), "a Flickr8k folder has no restval split "
       "(Karpathy JSONs and TFDS datasets do)"),
      ("data.synthetic_dir", "", kind != "synthetic", not_synthetic),
      ("data.synthetic_num_images", 2000, kind != "synthetic", not_synthetic),
      ("data.synthetic_size", 64, kind != "synthetic", not_synthetic),
      ("model.input_size", 0, m.get("encoder") == "small_cnn", "small_cnn's input side is model.image_size"),
      ("model.attention_backward", "manual", m.get("decoder_mode") != "attend",
       "only model.decoder_mode=attend has an attention recurrence"),
      ("train.augment", False, regime != "finetune", not_finetune),
      ("train.finetune_from_step", 0, regime != "finetune", not_finetune),
      ("train.image_feed", "auto", regime != "finetune", not_finetune),
      ("train.length_bucketing", True, regime == "finetune", "the finetune regime's feeds do not bucket captions "
       "by length (the cached regime does)"),
      ("train.captions_per_image", 0, regime not in ("cached", "top"), "only the cached and top regimes batch "
       f"captions by image (this run: {regime!r})"),
      ("train.length_bucketing", True, t.get("captions_per_image", 0) > 0, "image-major batches "
       "(train.captions_per_image > 0) hold each image's captions together, whatever their lengths"),
      ("train.top_stages", 2, regime != "top", f"only train.regime=top trains the encoder's top stages (this run: "
       f"{regime!r})"),
      ("train.scst_samples", 5, regime != "self_critical", not_scst),
      ("train.scst_temperature", 1.0, regime != "self_critical", not_scst),
      ("train.scst_baseline", "others", regime != "self_critical", not_scst),
  ]
  out = []
  for field, unused, is_ignored, why in table:
    value = _get(config, field)
    if is_ignored and value is not _MISSING and value != unused:
      source = [v for v in (FLICKR8K_DIR_VARIABLE, FLICKR30K_DIR_VARIABLE)
                if field == "data.data_dir" and os.environ.get(v) == value]
      out.append(f"{field}={value!r}{f' (from ${source[0]})' if source else ''} is ignored: {why}")
  steps, decay = t.get("num_steps", 0), t.get("decay_steps", 0)
  if steps and 0 < decay < steps:
    out.append(f"train.decay_steps={decay} is ignored: the schedule is never shorter than the run (train.num_steps="
               f"{steps}); 0 = the run's length")
  return out


def missing_folders(config) -> list[str]:
  """A line for a dataset folder or Karpathy JSON the config needs and does not name, or names but is not there."""
  d = config.data
  kind, data_dir = _kind(d), d.get("data_dir", "")
  out = []
  if kind in ("flickr8k", "karpathy"):
    how = (f"set --config.data.data_dir=/path/to/flickr8k or {FLICKR8K_DIR_VARIABLE}" if kind == "flickr8k" else
           f"set --config.data.data_dir=/path/to/images or the variable the config reads ({FLICKR30K_DIR_VARIABLE}: "
           f"configs/flickr30k_lite0.py, {FLICKR8K_DIR_VARIABLE}: the Flickr8k configs)")
    if not data_dir:
      out.append(f"data.data_dir is not set: data.dataset={d.get('dataset', 'flickr8k')!r} reads a folder; {how}")
    elif not os.path.isdir(os.path.expanduser(data_dir)):
      out.append(f"data.data_dir={data_dir!r} is not a folder: {how}")
  json_path = d.get("karpathy_json", "")
  if kind == "karpathy" and json_path and not os.path.isfile(os.path.expanduser(json_path)):
    out.append(f"data.karpathy_json={json_path!r} is not a file: set --config.data.karpathy_json=/path/to/"
               f"dataset_NAME.json (\"\" = the one dataset_*.json in data.data_dir)")
  return out


def _raise(problems: list[str]) -> None:
  if problems:
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    raise ConfigError(f"config {problems[0]}{more}")


def check(config, device_count: int | None = None, folders: bool = True) -> None:
  """Raises ConfigError for the first field outside its range or choices (fields a config lacks are left to
  their users' defaults), then for a field the run would ignore, then (`folders`) for a dataset folder that is
  not there. `device_count`: the global batch must split evenly over that many devices."""
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
  per_image = t.get("captions_per_image", 0)
  if not problems and per_image and t.batch_size % (per_image * (device_count or 1)):
    problems.append(f"train.batch_size={t.batch_size} is not allowed: train.captions_per_image={per_image} needs "
                    f"whole images on each of the {device_count or 1} device(s), a multiple of "
                    f"{per_image * (device_count or 1)}")
  k = t.get("steps_per_dispatch", 1)
  for field in ("log_every", "eval_every", "checkpoint_every"):
    if not problems and field in t and t[field] % k:
      problems.append(f"train.{field}={t[field]} is not allowed: must be a multiple of train.steps_per_dispatch={k}"
                      f" (intervals fall on dispatch ends)")
  _raise(problems or ignored(config) or (missing_folders(config) if folders else []))


def check_data(config, train: tuple[list, dict], dev: tuple[list, dict]) -> None:
  """Raises ConfigError for a value the data cannot satisfy; `train` and `dev` are a split's (image names,
  name -> captions)."""
  t, problems = config.train, []
  if t.regime == "self_critical":
    n, what = len(train[0]), "images (a self-critical batch is images)"
  else:
    n, what = sum(len(train[1][name]) for name in train[0]), "captions"
  if t.batch_size > n:
    problems.append(f"train.batch_size={t.batch_size} is more than the train split's {n} {what}: an epoch would "
                    f"hold no batch; use at most {n}")
  n_dev, limit = len(dev[0]), t.get("eval_num_images", 0)
  if limit > n_dev:
    problems.append(f"train.eval_num_images={limit} is more than the dev split's {n_dev} images: use at most "
                    f"{n_dev} (0 = all)")
  _raise(problems)
