"""The configs and their checks (`jaxcap.config_check`): fields the run would ignore, dataset folders from a flag or an
environment variable, values the data cannot satisfy, the regime names, the version. No training here."""
import ast
import importlib
import os
import re
import subprocess
import sys
import tomllib

import pytest

import jaxcap
from jaxcap import config_check
from jaxcap.config_check import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ("default", "quickstart", "flickr8k_lite0", "flickr8k_resnet50", "flickr30k_lite0", "coco_lite0")


def _config(name="quickstart", **overrides):
  c = importlib.import_module(f"configs.{name}").get_config()
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    c[section][field] = value
  return c


@pytest.fixture
def folders(monkeypatch, tmp_path):
  """Both dataset variables name existing (empty) folders: the configs that read a folder pass the folder check."""
  for var in ("JAXCAP_FLICKR8K_DIR", "JAXCAP_FLICKR30K_DIR"):
    os.makedirs(tmp_path / var)
    monkeypatch.setenv(var, str(tmp_path / var))
  return tmp_path


def _message(config) -> str:
  with pytest.raises(ConfigError) as e:
    config_check.check(config)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


# ---------------------------------------------------------------------------------------------------------
# One place for the regime names; config_check stands below the feeds
# ---------------------------------------------------------------------------------------------------------
def test_the_feeds_are_the_regimes_config_check_allows():
  from jaxcap import feeds
  assert set(feeds.FEEDS) == set(config_check.REGIMES)


def test_config_check_does_not_import_the_feeds():
  tree = ast.parse(open(config_check.__file__).read())
  imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
      {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names} | \
      {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  assert not any(name.startswith("jaxcap.feeds") for name in imported), imported


def test_version_is_pyprojects():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    assert jaxcap.__version__ == tomllib.load(f)["project"]["version"] == "0.2.0"


# ---------------------------------------------------------------------------------------------------------
# Shipped configs: docstrings, dataset folders
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED + ("flickr8k_best",))
def test_each_config_opens_with_its_command_and_names_no_workdir_of_past_runs(name):
  doc = importlib.import_module(f"configs.{name}").__doc__
  head = "\n".join(doc.splitlines()[:10])
  assert "python train.py" in head or "python -m jaxcap.recipe" in head
  assert "shared/data" not in doc and not re.search(r"\b20\d\d-\d\d-\d\d\b", doc)  # no dated runs
  assert set(re.findall(r"workdirs/(\w+)", doc)) <= {name}  # only the workdir the command itself writes


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_pass_when_their_folder_is_there(name, folders):
  config_check.check(_config(name))


def test_the_recipes_stages_pass_when_the_folder_is_there(folders):
  from configs import flickr8k_best
  from jaxcap import recipe
  assert len(recipe.stages(flickr8k_best.get_config(), "/w")) == 4  # cross-entropy, top, self-critical, cross-entropy on Lite0


def test_flickr8k_configs_read_their_folder_from_the_environment_when_they_are_built(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXCAP_FLICKR8K_DIR", str(tmp_path))
  monkeypatch.setenv("JAXCAP_FLICKR30K_DIR", str(tmp_path / "30k"))
  for name in ("default", "flickr8k_lite0", "flickr8k_resnet50"):
    assert _config(name).data.data_dir == str(tmp_path)
  assert importlib.import_module("configs.flickr8k_best").get_config().base.data.data_dir == str(tmp_path)
  assert _config("flickr30k_lite0").data.data_dir == str(tmp_path / "30k")
  # Generated data and TFDS read no folder, whatever the environment says.
  assert _config("quickstart").data.data_dir == "" and _config("coco_lite0").data.data_dir == ""
  monkeypatch.delenv("JAXCAP_FLICKR8K_DIR")
  assert _config("flickr8k_lite0").data.data_dir == ""


@pytest.mark.parametrize("name", ["default", "flickr8k_lite0", "flickr8k_resnet50"])
def test_a_flickr8k_config_without_its_folder_is_one_line_naming_the_flag_and_the_variable(name, monkeypatch, tmp_path):
  monkeypatch.delenv("JAXCAP_FLICKR8K_DIR", raising=False)
  assert _message(_config(name)) == ("config data.data_dir is not set: data.dataset='flickr8k' reads a folder; set "
                                     "--config.data.data_dir=/path/to/flickr8k or JAXCAP_FLICKR8K_DIR")
  monkeypatch.setenv("JAXCAP_FLICKR8K_DIR", str(tmp_path / "nope"))
  assert _message(_config(name)) == (f"config data.data_dir={str(tmp_path / 'nope')!r} is not a folder: set "
                                     "--config.data.data_dir=/path/to/flickr8k or JAXCAP_FLICKR8K_DIR")


def test_a_karpathy_config_without_its_folder_or_json_is_one_line(monkeypatch, tmp_path):
  monkeypatch.delenv("JAXCAP_FLICKR30K_DIR", raising=False)
  msg = _message(_config("flickr30k_lite0"))
  assert msg.startswith("config data.data_dir is not set: data.dataset='karpathy' reads a folder; set "
                        "--config.data.data_dir=/path/to/images or the variable the config reads")
  assert "JAXCAP_FLICKR30K_DIR" in msg
  monkeypatch.setenv("JAXCAP_FLICKR30K_DIR", str(tmp_path))
  msg = _message(_config("flickr30k_lite0", **{"data.karpathy_json": str(tmp_path / "dataset_flickr30k.json")}))
  assert msg.startswith(f"config data.karpathy_json={str(tmp_path / 'dataset_flickr30k.json')!r} is not a file: set "
                        "--config.data.karpathy_json=")


# ---------------------------------------------------------------------------------------------------------
# A field the run would ignore
# ---------------------------------------------------------------------------------------------------------
def test_a_data_dir_on_the_synthetic_quickstart_says_it_is_ignored_and_what_to_use():
  assert _message(_config("quickstart", **{"data.data_dir": "/path/to/flickr8k"})) == (
      "config data.data_dir='/path/to/flickr8k' is ignored: data.synthetic=True trains on generated shapes; to train "
      "on a folder use a dataset config, e.g. --config configs/flickr8k_lite0.py --config.data.data_dir=DIR")


def test_a_data_dir_from_the_environment_that_the_run_ignores_says_where_it_came_from(folders):
  msg = _message(_config("default", **{"data.synthetic": True}))
  assert msg.startswith(f"config data.data_dir={str(folders / 'JAXCAP_FLICKR8K_DIR')!r} (from $JAXCAP_FLICKR8K_DIR) "
                        "is ignored: data.synthetic=True"), msg


# (base config, overrides, the field reported, why): each field set where the run does not read it.
IGNORED = [
    ("quickstart", {"data.dataset": "karpathy"}, "data.dataset", "data.synthetic=True generates a Flickr8k folder"),
    ("quickstart", {"data.karpathy_json": "/d.json"}, "data.karpathy_json", "only data.dataset=karpathy reads it"),
    ("quickstart", {"data.use_restval": False}, "data.use_restval", "a Flickr8k folder has no restval split"),
    ("flickr8k_lite0", {"data.use_restval": False}, "data.use_restval", "a Flickr8k folder has no restval split"),
    ("coco_lite0", {"data.data_dir": "/d"}, "data.data_dir", "is read through TFDS, whose folder is data.tfds_dir"),
    ("coco_lite0", {"data.karpathy_json": "/d.json"}, "data.karpathy_json", "only data.dataset=karpathy reads it"),
    ("flickr8k_lite0", {"data.synthetic_dir": "/s"}, "data.synthetic_dir", "only data.synthetic=True generates"),
    ("flickr8k_lite0", {"data.synthetic_num_images": 100}, "data.synthetic_num_images",
     "only data.synthetic=True generates"),
    ("flickr8k_lite0", {"data.synthetic_size": 32}, "data.synthetic_size", "only data.synthetic=True generates"),
    ("quickstart", {"model.decoder_mode": "show_tell", "model.attention_backward": "autodiff"},
     "model.attention_backward", "only model.decoder_mode=attend has an attention recurrence"),
    ("flickr8k_lite0", {"train.augment": True}, "train.augment", "only train.regime=finetune reads images"),
    ("flickr8k_lite0", {"train.finetune_from_step": 100}, "train.finetune_from_step",
     "only train.regime=finetune reads images and trains the encoder (this run: 'cached')"),
    ("flickr8k_lite0", {"train.image_feed": "decoded"}, "train.image_feed", "only train.regime=finetune"),
    ("flickr8k_lite0", {"train.regime": "self_critical", "train.augment": True}, "train.augment",
     "(this run: 'self_critical')"),
    ("quickstart", {"train.length_bucketing": False}, "train.length_bucketing",
     "the finetune regime's feeds do not bucket captions by length"),
    ("flickr8k_lite0", {"train.scst_samples": 3}, "train.scst_samples", "only train.regime=self_critical samples"),
    ("quickstart", {"train.scst_temperature": 0.5}, "train.scst_temperature", "only train.regime=self_critical"),
    ("flickr8k_lite0", {"train.scst_baseline": "greedy"}, "train.scst_baseline", "only train.regime=self_critical"),
    ("quickstart", {"train.num_steps": 1500, "train.decay_steps": 1000}, "train.decay_steps",
     "the schedule is never shorter than the run (train.num_steps=1500)"),
]


@pytest.mark.parametrize("name,overrides,field,why", IGNORED, ids=[f"{c[0]}-{c[2]}" for c in IGNORED])
def test_a_field_the_run_would_ignore_is_one_line(name, overrides, field, why, folders):
  msg = _message(_config(name, **overrides))
  assert msg.startswith(f"config {field}={overrides[field]!r} is ignored: "), msg
  assert why in msg, msg


@pytest.mark.parametrize("regime", config_check.REGIMES)
@pytest.mark.parametrize("overrides", [{}, {"data.synthetic": True, "data.data_dir": ""},
                                       {"data.dataset": "karpathy"}, {"data.dataset": "tfds:coco_captions",
                                                                      "data.data_dir": ""},
                                       {"model.decoder_mode": "show_tell"}],
                         ids=["flickr8k", "synthetic", "karpathy", "tfds", "show_tell"])
def test_the_defaults_are_never_ignored_fields(regime, overrides, folders):
  """Every field at configs/default.py's value: nothing to report in any regime, dataset kind or decoder."""
  assert config_check.ignored(_config("default", **{"train.regime": regime, **overrides})) == []


def test_fields_the_run_reads_are_not_reported(folders):
  config_check.check(_config("quickstart", **{"train.augment": True, "train.image_feed": "decoded",
                                              "train.finetune_from_step": 10}))
  config_check.check(_config("flickr8k_lite0", **{"train.regime": "self_critical", "train.scst_samples": 3,
                                                  "train.num_steps": 1250, "train.decay_steps": 1750}))
  config_check.check(_config("flickr8k_lite0", **{"data.dataset": "karpathy", "data.use_restval": False}))


def test_range_errors_come_before_ignored_fields_and_ignored_fields_before_missing_folders(monkeypatch):
  monkeypatch.delenv("JAXCAP_FLICKR8K_DIR", raising=False)
  assert _message(_config("flickr8k_lite0", **{"train.batch_size": 0, "train.augment": True})).startswith(
      "config train.batch_size=0 is not allowed")
  assert _message(_config("flickr8k_lite0", **{"train.augment": True})).startswith(
      "config train.augment=True is ignored")


# ---------------------------------------------------------------------------------------------------------
# attention_backward: "manual" or "autodiff"
# ---------------------------------------------------------------------------------------------------------
def test_attention_backward_defaults_to_manual_and_auto_is_not_a_choice():
  from jaxcap.models.caption_model import make_model
  assert _config("default").model.attention_backward == "manual"
  assert _message(_config("quickstart", **{"model.attention_backward": "auto"})) == (
      "config model.attention_backward='auto' is not allowed: must be one of manual, autodiff")
  model_config = _config("quickstart").model
  del model_config["attention_backward"]  # a config written before the field existed
  assert make_model(model_config, 10).decoder.attention_backward == "manual"


# ---------------------------------------------------------------------------------------------------------
# What the data cannot satisfy
# ---------------------------------------------------------------------------------------------------------
def _splits(n_train, n_dev, per_image=5):
  train = [f"t{i}.jpg" for i in range(n_train)]
  dev = [f"d{i}.jpg" for i in range(n_dev)]
  return (train, {n: ["a caption"] * per_image for n in train}), (dev, {n: ["a caption"] * 5 for n in dev})


def test_what_the_data_can_satisfy_passes():
  train, dev = _splits(6, 2)
  config_check.check_data(_config("quickstart", **{"train.batch_size": 30, "train.eval_num_images": 2}), train, dev)
  config_check.check_data(_config("quickstart", **{"train.regime": "self_critical", "train.batch_size": 6}),
                          train, dev)


def test_a_batch_larger_than_the_train_split_is_one_line():
  train, dev = _splits(6, 2)
  with pytest.raises(ConfigError) as e:
    config_check.check_data(_config("quickstart", **{"train.batch_size": 32}), train, dev)
  assert str(e.value) == ("config train.batch_size=32 is more than the train split's 30 captions: an epoch would "
                          "hold no batch; use at most 30")
  with pytest.raises(ConfigError, match=r"^config train.batch_size=8 is more than the train split's 6 images "
                                        r"\(a self-critical batch is images\)"):
    config_check.check_data(_config("quickstart", **{"train.regime": "self_critical", "train.batch_size": 8}),
                            train, dev)


def test_more_dev_images_than_the_split_has_is_one_line():
  train, dev = _splits(6, 2)
  with pytest.raises(ConfigError) as e:
    config_check.check_data(_config("quickstart", **{"train.batch_size": 8, "train.eval_num_images": 3}), train, dev)
  assert str(e.value) == ("config train.eval_num_images=3 is more than the dev split's 2 images: use at most 2 "
                          "(0 = all)")


# ---------------------------------------------------------------------------------------------------------
# As a new user meets it
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_data_dir_on_the_default_command_is_one_line_before_any_work(tmp_path):
  workdir = tmp_path / "w"
  out = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--workdir", str(workdir),
                        f"--config.data.data_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode != 0
  assert "Traceback" not in out.stderr, out.stderr
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith(f"error: config data.data_dir={str(tmp_path)!r} is ignored: data.synthetic=True"), lines
  assert "configs/flickr8k_lite0.py" in lines[-1]
  assert not workdir.exists()
