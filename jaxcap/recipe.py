"""A recipe: the training runs that make one result, in order, then its test evaluation. One command:

    python -m jaxcap.recipe --config configs/flickr8k_best.py --workdir workdirs/flickr8k_best \
        [--config.base.data.data_dir=DIR] [--config.seeds=1]

A recipe config (see configs/flickr8k_best.py) holds
  - `base`: a training config (the cross-entropy run);
  - `top` (optional): `train` fields that turn it into the encoder adaptation run started from the cross-entropy
    one (the top regime, `jaxcap.feeds.top`; empty: no such stage), for the first `top_seeds` seeds (default
    all);
  - `self_critical`: `train` fields that turn it into the self-critical run started from the chain's previous
    stage (empty: no self-critical stage);
  - `seeds`: how many chains (seeds 0..n-1); with more than one, the final models are also evaluated as an
    ensemble;
  - `encoders` (optional): chain i's encoder is encoders[i] (the base's past the end of the list); an ensemble
    across encoders sees more than one view of each image. A chain on another encoder than the base's is named
    after it too (xe_seed1_lite0);
  - `self_critical_seeds`: how many of them (the first ones) go on to the self-critical run; the others end
    with cross-entropy;
  - `ensemble_cross_entropy` (default False): the ensemble also takes the model each self-critical one started
    from (the cross-entropy one, or the adapted one after a top stage; else only each chain's last model);
  - `beam`, `alpha`: the test decoding;
  - `consensus` (optional, e.g. dict(k=15, weight=4.0)): before the test evaluations, a consensus index
    (`jaxcap.consensus`) is built in the first chain's last stage, the first member of both evaluations, and
    beam search's captions are re-ranked by it.
Every stage is an ordinary training run in <workdir>/<stage> (xe_seed0, top_seed0, scst_seed0, ...), so a rerun after a
crash resumes the stage it was in and passes over finished ones; a stage stopped by a signal (Ctrl-C, SIGTERM)
saves, and the recipe stops there (the next stage must not start from a half-trained model) and says to rerun.
The encoder's ImageNet weights are converted first when they are missing (needs requirements-torch.txt). At
the end the first chain's model (the single model) and, with several seeds, the ensemble are evaluated on the
test split with every metric; the results and each stage's wall time go to <workdir>/recipe.json, and the last
line of stdout is that JSON object.
"""
from __future__ import annotations

import json
import os
import sys
import time

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from jaxcap.process import default_workdir, error_line, exit_process

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Recipe config (a .py with get_config()); fields overridable as "
                                "--config.FIELD=v", lock_config=True)
flags.DEFINE_string("workdir", None, "Every stage's workdir goes under it (default: workdirs/<config name>)")


def chains(recipe: ml_collections.ConfigDict, workdir: str) -> list[list[tuple[str, ml_collections.ConfigDict]]]:
  """Every seed's runs, (workdir, training config) in the order they run: cross-entropy, then the encoder's top
  adapted from it for the first `top_seeds` seeds, then self-critical from the last of those for the first
  `self_critical_seeds` seeds. Every stage's config is checked (`config_check`) before any
  stage trains."""
  from jaxcap import config_check
  from jaxcap.config_check import ConfigError
  for field in ("self_critical_seeds", "top_seeds"):
    if not 0 <= recipe.get(field, 0) <= recipe.seeds:
      raise ConfigError(f"recipe {field}={recipe[field]}: must be 0..seeds ({recipe.seeds})")
  encoders = list(recipe.get("encoders", None) or [])
  if len(encoders) > recipe.seeds:
    raise ConfigError(f"recipe encoders: {len(encoders)} given for {recipe.seeds} seeds")
  for e in encoders:
    # A weights file names one encoder; "default" finds each encoder's own.
    if e != recipe.base.model.encoder and recipe.base.model.pretrained not in ("", "default"):
      raise ConfigError(f"recipe encoders: {e!r} differs from the base's {recipe.base.model.encoder!r}, whose "
                        f"pretrained weights file {recipe.base.model.pretrained!r} it cannot load; use "
                        "model.pretrained='default'")
  out = []
  for seed in range(recipe.seeds):
    xe = recipe.base.copy_and_resolve_references()
    xe.seed = seed
    xe.model.encoder = encoders[seed] if seed < len(encoders) else xe.model.encoder
    name = f"seed{seed}" + ("" if xe.model.encoder == recipe.base.model.encoder else
                            "_" + xe.model.encoder.removeprefix("efficientnet_"))
    chain = [(os.path.join(workdir, f"xe_{name}"), xe)]
    for stage, fields, seeds in (("top", recipe.get("top", None), recipe.get("top_seeds", recipe.seeds)),
                                 ("scst", recipe.self_critical, recipe.self_critical_seeds)):
      if fields and seed < seeds:  # each stage starts from the chain's previous one
        run = xe.copy_and_resolve_references()
        run.train.update(fields)
        run.train.init_from = chain[-1][0]
        chain.append((os.path.join(workdir, f"{stage}_{name}"), run))
    for stage_dir, config in chain:
      try:
        config_check.check(config)
      except ConfigError as e:
        # A stage's fields are the recipe's base's: the flags that set them are --config.base.*.
        line = str(e).replace("--config.", "--config.base.")
        raise ConfigError(f"recipe stage {os.path.basename(stage_dir)}: {line}") from None
    out.append(chain)
  return out


def stages(recipe: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(workdir, training config) of every run, in the order they run."""
  return [stage for chain in chains(recipe, workdir) for stage in chain]


def final_models(recipe: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """The last stage of every seed's chain."""
  return [chain[-1][0] for chain in chains(recipe, workdir)]


def ensemble_models(recipe: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """The test ensemble: every chain's last stage, each followed, with `ensemble_cross_entropy`, by the stage it
  started from (cross-entropy, or the adapted encoder's run)."""
  return [d for chain in chains(recipe, workdir)
          for d, _ in (chain[:-3:-1] if recipe.get("ensemble_cross_entropy", False) else chain[-1:])]


class StageStopped(Exception):
  """A stage ended before its last step (a signal; it saved): a rerun resumes it."""


def run(recipe: ml_collections.ConfigDict, workdir: str, log=lambda *x: print(*x, file=sys.stderr, flush=True)):
  from jaxcap import evaluate, pretrained, train_lib
  from jaxcap.consensus.build import write as write_consensus

  t0, result = time.time(), {"stages": {}}
  for stage_dir, config in stages(recipe, workdir):
    if config.model.pretrained == "default" and not os.path.exists(pretrained.weights_path(config)):
      log(f"converting the {config.model.encoder} ImageNet weights (once)")
      pretrained.convert(config.model.encoder)
  for stage_dir, config in stages(recipe, workdir):
    log(f"\n== {os.path.basename(stage_dir)} ({time.time() - t0:.0f} s into the recipe)")
    t = time.time()
    r = train_lib.train_and_evaluate(config, stage_dir)
    if r["step"] < r["total_steps"]:
      raise StageStopped(f"{stage_dir}: stopped at step {r['step']} of {r['total_steps']}, saved")
    result["stages"][os.path.basename(stage_dir)] = {
        "wall_s": time.time() - t, **{k: v for k, v in r.items() if k.startswith(("best_", "test_", "dev_"))
                                      and not k.endswith("example")}}
  members = ensemble_models(recipe, workdir)
  if recipe.get("consensus", None):
    t = time.time()
    log(f"\n== consensus index ({time.time() - t0:.0f} s into the recipe)")
    write_consensus(final_models(recipe, workdir)[0], k=recipe.consensus.k, weight=recipe.consensus.weight, log=log)
    result["consensus_s"] = time.time() - t
  evals = {"single": final_models(recipe, workdir)[:1]} | (
      {f"ensemble{len(members)}": members} if len(members) > 1 else {})
  for name, checkpoints in evals.items():
    log(f"\n== test, {name}: {' + '.join(checkpoints)}")
    args = evaluate.parser().parse_args(sum((["--checkpoint", c] for c in checkpoints), []) +
                                        ["--split", "test", "--beam", str(recipe.beam), "--alphas", str(recipe.alpha)])
    result[name] = evaluate.run(args, log)
  result["wall_s"] = time.time() - t0
  with open(os.path.join(workdir, "recipe.json"), "w") as f:
    json.dump(result, f, indent=1)
  return result


def main(argv) -> int:
  del argv
  from absl import logging

  from jaxcap import allocator, logs

  logging.set_verbosity(logging.WARNING)
  logs.install()
  allocator.for_backend()  # glibc malloc keeps freed step buffers for reuse (CPU only)
  if FLAGS.config is None:
    print("error: --config is required (a recipe config, e.g. configs/flickr8k_best.py)", file=sys.stderr)
    return 2
  workdir = FLAGS.workdir or default_workdir(FLAGS["config"].config_filename)
  try:
    os.makedirs(workdir, exist_ok=True)
    result = run(FLAGS.config, workdir)
  except StageStopped as e:
    print(f"stopped: {e}; rerun the same command to resume", file=sys.stderr)
    return 130
  except KeyboardInterrupt:  # between stages or before training started (then Ctrl-C saves and stops)
    print("stopped: interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001  (one line for what the user can fix; anything else raises)
    if (line := error_line(e, workdir)) is None:
      raise
    print(line, file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  app.run(lambda argv: exit_process(main(argv)))
