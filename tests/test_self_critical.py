"""Self-critical training: from a cross-entropy checkpoint, CIDEr-D-rewarded sampling, selection on dev CIDEr-D,
exact resume."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxcap import decode, objectives, train_lib, train_state
from jaxcap.data import vocab as V

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _records(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def xent(tiny_config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("scst") / "xent")
  train_lib.train_and_evaluate(tiny_config("cached", **{"train.num_steps": 40, "train.eval_every": 20,
                                                        "train.final_test_eval": False}), workdir)
  return workdir


def _scst(tiny_config, xent, **extra):
  return tiny_config("self_critical", **{"train.init_from": xent, "train.select_metric": "cider",
                                         "train.learning_rate": 1e-4, "train.warmup_steps": 0,
                                         "train.final_lr_fraction": 1.0, "train.batch_size": 4,
                                         "train.eval_every": 5, "train.checkpoint_every": 5, **extra})


def test_reward_counts_end_and_prefers_the_reference():
  vocab = V.Vocab(list(V.SPECIALS) + ["a", "red", "circle", "above", "blue", "square"])
  train = (["x.jpg", "y.jpg"], {"x.jpg": ["A red circle above a blue square ."] * 5,
                                "y.jpg": ["a blue square above a red circle"] * 5})
  reward = objectives.CiderReward(vocab, train)
  ids = lambda s, end=True: vocab.to_ids(s)[1:] if end else vocab.to_ids(s)[1:-1]  # noqa: E731
  pad = lambda t: t + [V.PAD_ID] * (9 - len(t))  # noqa: E731
  tokens = np.array([[pad(ids("a red circle above a blue square")), pad(ids("a red circle above a blue square", False)),
                      pad(ids("a blue square above a"))]])
  r = reward(tokens, np.array([0]))[0]
  assert r[0] > r[1] > 0 and r[0] > r[2]  # the reference with <end> beats it without, and a dangling caption


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["others", "greedy"])
def test_advantage_is_the_reward_over_the_chosen_baseline(tiny_config, baseline):
  config = tiny_config("self_critical", **{"train.scst_baseline": baseline, "train.scst_samples": 3})
  model, variables = train_state.init_model(config, vocab_size=12)
  grid = jax.random.normal(jax.random.key(0), (4, 2, 2, 128))  # the tiny encoder's grid width
  length = lambda tokens, index: (tokens != V.PAD_ID).sum(-1).astype(np.float32)  # noqa: E731  reward: length
  objective = objectives.self_critical(config, length)
  rng = jax.random.key(1)
  _, metrics, _ = objective(model, variables["params"], {}, {"grid": grid, "image_index": np.arange(4)}, rng)
  max_len, params = config.train.decode_max_len, variables["params"]["decoder"]
  sampling = jax.random.fold_in(rng, objectives.SAMPLING)  # the objective's sampling stream
  samples = length(np.asarray(decode.sample(model.decoder, params, grid, sampling, 3, max_len)[0]), None)
  if baseline == "greedy":  # what the model says now: samples longer than it are pushed up, shorter down
    expected = samples - length(np.asarray(decode.greedy(model.decoder, params, grid, max_len)[0])[:, None], None)
  else:
    expected = samples - (samples.sum(1, keepdims=True) - samples) / 2
  assert np.abs(expected).mean() > 0
  np.testing.assert_allclose(float(metrics["advantage_abs"]), np.abs(expected).mean(), rtol=1e-6)


@pytest.mark.slow
def test_self_critical_starts_from_the_checkpoint_selects_on_cider_and_resumes_exactly(tiny_config, xent, tmp_path):
  straight = str(tmp_path / "straight")
  result = train_lib.train_and_evaluate(_scst(tiny_config, xent, **{"train.num_steps": 10}), straight)
  records = _records(straight)
  steps = [r for r in records if "reward" in r]
  assert [r["step"] for r in steps] == list(range(1, 11)) and all(np.isfinite(r["loss"]) for r in steps)
  assert all(0 <= r["reward"] for r in steps)
  dev = [r for r in records if "dev_cider" in r]
  assert result["best_dev_cider"] == max(r["dev_cider"] for r in dev)
  # Started from the cross-entropy weights: its first dev evaluation is close to where that run ended.
  xent_last = [r for r in _records(xent) if "dev_cider" in r][-1]
  assert abs(dev[0]["dev_cider"] - xent_last["dev_cider"]) < 0.5 * max(xent_last["dev_cider"], 0.05)

  resumed = str(tmp_path / "resumed")
  train_lib.train_and_evaluate(_scst(tiny_config, xent, **{"train.num_steps": 5}), resumed)
  train_lib.train_and_evaluate(_scst(tiny_config, xent, **{"train.num_steps": 10}), resumed)
  a = {r["step"]: r["loss"] for r in records if "reward" in r}
  b = {r["step"]: r["loss"] for r in _records(resumed) if "reward" in r}
  np.testing.assert_allclose([b[s] for s in range(1, 11)], [a[s] for s in range(1, 11)], rtol=1e-6)


@pytest.mark.slow
def test_init_from_refuses_another_vocabulary(tiny_config, xent):
  with pytest.raises(train_state.TrainError, match="vocabulary .* differs"):
    train_state.init_model(_scst(tiny_config, xent), 7, list(V.SPECIALS) + ["a", "b", "c"])


# One self-critical loss and gradient on a batch of 8 train images sharded over the devices' `data` axis, rewarded
# by a CIDEr-D reward that records what each call receives; prints the loss, the calls and the compiled program's
# gathers of integer arrays (the sampled tokens, the image indices).
SHARDED_SCRIPT = """
import json, re, sys
import jax, ml_collections, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxcap import objectives
from jaxcap.data import vocab as V
from jaxcap.models.caption_model import make_model

config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
shapes = ["circle", "square", "triangle"]
vocab = V.Vocab(list(V.SPECIALS) + ["a", "red", "blue", "above", "below"] + shapes)
names = [f"{i}.jpg" for i in range(8)]
captions = {n: [f"a {c} {shapes[i % 3]} {p} a {d} {shapes[(i + 1) % 3]}" for c, d in (("red", "blue"), ("blue", "red"))
                for p in ("above", "below")] for i, n in enumerate(names)}


class RecordedCider(objectives.CiderReward):
  calls = []

  def __call__(self, tokens, image_index):
    self.calls.append({"shape": list(tokens.shape), "images": image_index.tolist()})
    return super().__call__(tokens, image_index)


reward = RecordedCider(vocab, (names, captions))
model = make_model(config.model, len(vocab))
mesh = Mesh(np.asarray(jax.devices()), ("data",))
grid = np.asarray(jax.random.normal(jax.random.key(0), (8, 2, 2, 128)))
batch = jax.device_put({"grid": grid, "image_index": np.array([5, 2, 7, 0, 3, 6, 1, 4], np.int32)},
                       NamedSharding(mesh, P("data")))
params = jax.device_put(jax.jit(model.decoder.init)(jax.random.key(1), grid, np.ones((8, 3), np.int32))["params"],
                        NamedSharding(mesh, P()))
objective = objectives.self_critical(config, reward)
step = jax.jit(jax.value_and_grad(lambda p: objective(model, {"decoder": p}, {}, batch, jax.random.key(2))[:2],
                                  has_aux=True))
compiled = step.lower(params).compile()
(loss, metrics), grads = compiled(params)
print(json.dumps({"loss": float(loss), "reward": float(metrics["reward"]), "grad_norm": float(jax.tree.reduce(
    lambda a, g: a + float((np.asarray(g) ** 2).sum()), grads, 0.0)) ** 0.5, "calls": reward.calls,
    "int_gathers": re.findall(r"s32\\[[\\d,]*\\]\\S* all-gather", compiled.as_text())}))
"""


@pytest.mark.slow
def test_each_device_samples_are_scored_where_they_live_with_the_one_device_losses(tiny_config):
  config = tiny_config("self_critical", **{"train.scst_baseline": "greedy", "train.scst_samples": 3})
  runs = {}
  for n in (1, 4):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, config.to_json()], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
  index = [5, 2, 7, 0, 3, 6, 1, 4]
  length = config.train.decode_max_len
  # One device: one call for the samples [8, 3, L] and one for the greedy captions [8, 1, L].
  assert sorted(c["shape"] for c in runs[1]["calls"]) == [[8, 1, length], [8, 3, length]]
  # Four: every device's samples and greedy captions scored on its own two rows, never another device's.
  calls = runs[4]["calls"]
  assert sorted(c["shape"] for c in calls) == [[2, 1, length]] * 4 + [[2, 3, length]] * 4
  own = [index[2 * d:2 * d + 2] for d in range(4)]
  for s in (1, 3):
    assert sorted(c["images"] for c in calls if c["shape"][1] == s) == sorted(own)
  assert runs[4]["int_gathers"] == []  # no tokens (nor image indices) gathered to be scored elsewhere
  assert runs[1]["reward"] > 0
  for k in ("loss", "reward", "grad_norm"):
    np.testing.assert_allclose(runs[4][k], runs[1][k], rtol=1e-5, err_msg=k)
