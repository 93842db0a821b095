"""A recipe (jaxcap.recipe): cross-entropy then self-critical for each seed, one command, resumable, and the
single model and the ensemble evaluated on test."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from jaxcap import checkpoint, pretrained, recipe, train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recipe(tiny_config, encoder_file, seeds=2, self_critical_seeds=2):
  c = ml_collections.ConfigDict()
  c.base = tiny_config("cached", **{"train.num_steps": 20, "train.eval_every": 10, "train.checkpoint_every": 10,
                                    "model.pretrained": encoder_file})
  c.self_critical = ml_collections.ConfigDict(dict(
      regime="self_critical", select_metric="cider", learning_rate=1e-4, warmup_steps=0, final_lr_fraction=1.0,
      num_steps=4, batch_size=4, eval_every=2, checkpoint_every=2))
  c.seeds, c.self_critical_seeds, c.beam, c.alpha = seeds, self_critical_seeds, 2, 1.0
  c.ensemble_cross_entropy = False
  c.consensus = ml_collections.ConfigDict(dict(k=3, weight=1.0))
  return c


@pytest.mark.slow
def test_recipe_chains_stages_per_seed_evaluates_single_and_ensemble_and_a_rerun_passes_over_them(tiny_config,
                                                                                                   tmp_path):
  workdir = str(tmp_path / "best")
  os.makedirs(workdir)
  # An ensemble's members share one encoder: the seeds start from the same "pretrained" small_cnn weights.
  encoder_file = str(tmp_path / "small_cnn.msgpack")
  _, v = train_state.init_model(tiny_config("cached", **{"model.pretrained": ""}), 10)
  pretrained.save(encoder_file, "small_cnn", {k: v[k]["encoder"] for k in ("params", "batch_stats")}, "test")
  result = recipe.run(_recipe(tiny_config, encoder_file), workdir, log=lambda *a: None)
  assert list(result["stages"]) == ["xe_seed0", "scst_seed0", "xe_seed1", "scst_seed1"]
  # Each self-critical stage started from its own seed's cross-entropy run and selected on dev CIDEr-D.
  for seed in (0, 1):
    sc = json.load(open(os.path.join(workdir, f"scst_seed{seed}", "config.json")))["train"]
    assert sc["init_from"] == os.path.join(workdir, f"xe_seed{seed}") and sc["select_metric"] == "cider"
    assert result["stages"][f"scst_seed{seed}"]["best_dev_cider"] >= 0
  a, b = (checkpoint.load(os.path.join(workdir, f"xe_seed{s}"))[0]["params"]["decoder"] for s in (0, 1))
  assert not np.allclose(a["out"]["kernel"], b["out"]["kernel"])  # the seeds are different models
  single, ensemble = result["single"], result["ensemble2"]
  assert single["checkpoint"].startswith(os.path.join(workdir, "scst_seed0"))
  assert " + " in ensemble["checkpoint"] and "scst_seed1" in ensemble["checkpoint"]
  # Both evaluations re-rank beams by the consensus index built in their first member's workdir.
  assert os.path.exists(os.path.join(workdir, "scst_seed0", "consensus.npz")) and result["consensus_s"] >= 0
  for r in (single, ensemble):
    assert r["split"] == "test" and r["beam"] == 2 and 0 <= r["bleu4"] <= 1 and r["cider"] >= 0
    assert r["rerank"] == 1.0
    assert 0 <= r["dangling"] <= 1
  assert json.load(open(os.path.join(workdir, "recipe.json")))["single"]["bleu4"] == single["bleu4"]

  again = recipe.run(_recipe(tiny_config, encoder_file), workdir, log=lambda *a: None)  # finished stages: nothing retrained
  assert again["single"]["bleu4"] == single["bleu4"] and again["ensemble2"]["bleu4"] == ensemble["bleu4"]
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "scst_seed1", "metrics.jsonl"))
           if "loss" in l]
  assert steps == sorted(set(steps))  # no step trained twice


def test_a_chain_on_another_encoder_trains_on_it_and_is_named_after_it(tiny_config):
  from jaxcap.config_check import ConfigError
  c = _recipe(tiny_config, "", seeds=3, self_critical_seeds=1)
  c.encoders = ["small_cnn", "resnet18"]
  got = [(os.path.basename(d), cfg.model.encoder, cfg.seed) for d, cfg in recipe.stages(c, "w")]
  assert got == [("xe_seed0", "small_cnn", 0), ("scst_seed0", "small_cnn", 0), ("xe_seed1_resnet18", "resnet18", 1),
                 ("xe_seed2", "small_cnn", 2)]
  c.encoders = ["small_cnn"] * 4
  with pytest.raises(ConfigError, match="4 given for 3 seeds"):
    recipe.stages(c, "w")
  c.encoders = ["small_cnn", "efficientnet_lite9"]
  with pytest.raises(ConfigError, match=r"stage xe_seed1_lite9: config model.encoder='efficientnet_lite9' is not "
                                        r"allowed: must be one of small_cnn, efficientnet_lite0"):
    recipe.stages(c, "w")
  c.encoders, c.base.model.pretrained = ["small_cnn", "resnet18"], "/weights/small_cnn.msgpack"
  with pytest.raises(ConfigError, match="'resnet18' differs from the base's 'small_cnn'.*cannot load"):
    recipe.stages(c, "w")


@pytest.mark.slow
def test_a_signal_to_the_recipe_saves_the_running_stage_and_starts_no_other(tiny_config, tmp_path):
  import signal
  import time
  c = _recipe(tiny_config, "", seeds=1, self_critical_seeds=1)
  c.base.model.pretrained = ""
  c.base.train.update(num_steps=100_000, eval_every=100_000, checkpoint_every=100_000)  # would run for hours
  config_file = tmp_path / "recipe_config.py"
  config_file.write_text(f"import ml_collections\n\ndef get_config():\n"
                         f"  return ml_collections.ConfigDict({c.to_dict()!r})\n")
  workdir = tmp_path / "w"
  p = subprocess.Popen([sys.executable, "-m", "jaxcap.recipe", "--config", str(config_file), "--workdir",
                        str(workdir)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "xe_seed0" / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and '"loss"' in metrics.read_text()):  # training
    assert p.poll() is None and time.time() < deadline, p.stderr.read() if p.poll() is not None else "timeout"
    time.sleep(0.5)
  p.send_signal(signal.SIGTERM)
  err = p.communicate(timeout=300)[1]
  assert p.returncode == 130, err
  assert err.strip().splitlines()[-1].startswith("stopped: ") and "rerun the same command to resume" in err
  assert 0 < checkpoint.load(str(workdir / "xe_seed0"))[1]["step"] < 100_000  # saved where it stopped
  assert not (workdir / "scst_seed0").exists()  # self-critical training never started from the half-trained model


def test_recipe_without_a_config_is_one_line():
  p = subprocess.run([sys.executable, "-m", "jaxcap.recipe"], cwd=ROOT, capture_output=True, text=True)
  assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: --config is required")


def test_the_shipped_recipe_is_the_dev_choice_adapted_then_self_critical_seed0_with_cross_entropy_seed1_on_lite0(
    monkeypatch, tmp_path):
  from configs import flickr8k_best
  monkeypatch.setenv("JAXCAP_FLICKR8K_DIR", str(tmp_path))  # the stages' configs are checked: the folder must exist
  c = flickr8k_best.get_config()
  got = [(os.path.basename(w), s.train.regime, s.train.init_from, s.seed, s.model.encoder)
         for w, s in recipe.stages(c, "/w")]
  assert got == [("xe_seed0", "cached", "", 0, "efficientnet_lite1"),
                 ("top_seed0", "top", "/w/xe_seed0", 0, "efficientnet_lite1"),
                 ("scst_seed0", "self_critical", "/w/top_seed0", 0, "efficientnet_lite1"),
                 ("xe_seed1_lite0", "cached", "", 1, "efficientnet_lite0")]
  assert recipe.final_models(c, "/w") == ["/w/scst_seed0", "/w/xe_seed1_lite0"]
  assert recipe.ensemble_models(c, "/w") == ["/w/scst_seed0", "/w/top_seed0", "/w/xe_seed1_lite0"]
  assert (c.beam, c.consensus.k, c.consensus.weight) == (20, 15, 4.0)  # consensus reranking chosen on dev


def test_only_the_first_self_critical_seeds_go_on_to_self_critical_and_a_bad_count_is_refused(tiny_config):
  c = _recipe(tiny_config, "", seeds=3, self_critical_seeds=1)
  assert [os.path.basename(w) for w, _ in recipe.stages(c, "/w")] == ["xe_seed0", "scst_seed0", "xe_seed1",
                                                                       "xe_seed2"]
  assert recipe.final_models(c, "/w") == ["/w/scst_seed0", "/w/xe_seed1", "/w/xe_seed2"]
  assert recipe.ensemble_models(c, "/w") == recipe.final_models(c, "/w")
  c.ensemble_cross_entropy = True  # the self-critical model's own cross-entropy start joins the ensemble
  assert recipe.ensemble_models(c, "/w") == ["/w/scst_seed0", "/w/xe_seed0", "/w/xe_seed1", "/w/xe_seed2"]
  c.self_critical_seeds = 4
  with pytest.raises(ValueError, match=r"self_critical_seeds=4: must be 0\.\.seeds \(3\)"):
    recipe.stages(c, "/w")


def test_a_top_stage_adapts_the_encoder_between_cross_entropy_and_self_critical(tiny_config):
  """With `top`, the first `top_seeds` chains adapt the encoder's top from their cross-entropy run, and
  self-critical training starts from the adapted model; the ensemble's extra member is the model it started from."""
  c = _recipe(tiny_config, "", seeds=2, self_critical_seeds=1)
  c.top = ml_collections.ConfigDict(dict(regime="top", top_stages=1, captions_per_image=5, batch_size=10))
  c.top_seeds = 1
  got = [(os.path.basename(w), s.train.regime, s.train.init_from) for w, s in recipe.stages(c, "/w")]
  assert got == [("xe_seed0", "cached", ""), ("top_seed0", "top", "/w/xe_seed0"),
                 ("scst_seed0", "self_critical", "/w/top_seed0"), ("xe_seed1", "cached", "")]
  stages = dict(recipe.stages(c, "/w"))
  assert stages["/w/scst_seed0"].train.captions_per_image == 0  # built on the cross-entropy config, not the top's
  c.ensemble_cross_entropy = True
  assert recipe.ensemble_models(c, "/w") == ["/w/scst_seed0", "/w/top_seed0", "/w/xe_seed1"]
  c.top_seeds = 3
  with pytest.raises(ValueError, match=r"top_seeds=3: must be 0\.\.seeds \(2\)"):
    recipe.stages(c, "/w")
