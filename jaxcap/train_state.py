"""The train-state builder: model, initial variables (with pretrained encoder weights), optimizer, train state,
and the train step on an objective (`jaxcap.objectives`). The trainer and every bench script build through here.

    model, variables = train_state.init_model(config, vocab_size)
    setup = train_state.build(config, model, variables, total_steps, trainable=("decoder",))
    objective = objectives.cross_entropy(config, objectives.decoder_forward)   # or a feed's objective
    step = jax.jit(train_state.make_train_step(setup, objective), donate_argnums=0)

The train state is a plain dict: step, params {encoder, decoder}, batch_stats, opt_state, rng.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxcap import checkpoint, pretrained
from jaxcap.models.caption_model import CaptionModel, make_model
from jaxcap.objectives import Objective


class TrainError(Exception):
  """A problem the user can fix; the message is one line."""


# Random streams, one per purpose, each folded from PRNGKey(config.seed): seed 1's initialisation shares no
# draws with seed 0's dropout, and a new purpose never shifts another's draws. The train step folds the step
# number into TRAIN, and the objective folds its purpose (dropout, sampling: `jaxcap.objectives`) into that.
INIT, TRAIN = 0, 1


def stream(seed: int, purpose: int) -> jax.Array:
  """The key of `purpose` (INIT, TRAIN) for `seed`."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), purpose)


def init_model(config, vocab_size: int, vocab_tokens: Sequence[str] | None = None) -> tuple[CaptionModel, dict]:
  """The model and its initial variables (params and batch_stats): the pretrained encoder weights the config
  names, or all of `train.init_from`'s weights (a workdir or checkpoint, e.g. cross-entropy training before
  self-critical; its vocabulary must be `vocab_tokens`). Deterministic in config.seed."""
  model = make_model(config.model, vocab_size)
  size = model.encoder.preprocessing.size
  images = jnp.zeros((1, size, size, 3), jnp.uint8)
  tokens = jnp.zeros((1, 2), jnp.int32)
  variables = jax.jit(model.init)(stream(config.seed, INIT), images, tokens)
  variables = jax.tree.map(np.asarray, dict(variables))
  variables.setdefault("batch_stats", {"encoder": {}})
  if config.model.pretrained:
    loaded = pretrained.load(pretrained.weights_path(config), config.model.encoder)
    for col in ("params", "batch_stats"):
      want = traverse_util.flatten_dict(variables[col]["encoder"]) if variables[col].get("encoder") else {}
      have = traverse_util.flatten_dict(loaded.get(col, {}))
      missing = [k for k in want if k not in have or have[k].shape != want[k].shape]
      if missing:
        raise TrainError(f"{pretrained.weights_path(config)}: weights do not fit encoder {config.model.encoder!r} "
                         f"(e.g. {'/'.join(missing[0])})")
      if want:  # classifier weights in the file are not part of the encoder and are left out
        variables[col]["encoder"] = traverse_util.unflatten_dict({k: have[k] for k in want})
  if config.train.get("init_from"):
    state, meta, source = checkpoint.load(config.train.init_from)
    if vocab_tokens is not None and list(meta["vocab"]) != list(vocab_tokens):
      raise TrainError(f"{source}: train.init_from's vocabulary ({len(meta['vocab'])} tokens) differs from this "
                       f"run's ({len(vocab_tokens)} tokens); start from a checkpoint trained on the same data")
    loaded = {"params": state["params"], "batch_stats": state["batch_stats"]}
    if jax.tree.structure(loaded) != jax.tree.structure(variables):
      raise TrainError(f"{source}: train.init_from's weights do not fit this config's model")
    variables = jax.tree.map(np.asarray, loaded)
  return model, variables


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config, total_steps: int, trainable: Sequence[str] = ("decoder",)) -> optax.GradientTransformation:
  """Clipping, then AdamW (warmup + cosine) for the decoder; for the encoder its own AdamW (its own learning
  rate and schedule) starting at `train.finetune_from_step` when it is `trainable` ("encoder", or some of its
  modules as "encoder/<name>": the others get zero updates and no state), else zero updates."""
  t = config.train
  schedule_steps = max(total_steps, t.decay_steps)  # a longer schedule: the run stops partway down its curve
  warmup = min(t.warmup_steps, max(schedule_steps - 1, 1))

  def cosine(peak, steps):
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), peak * t.final_lr_fraction)

  decoder = optax.adamw(cosine(t.learning_rate, schedule_steps), weight_decay=t.weight_decay, mask=_decay_mask)
  encoder_modules = {g.partition("/")[2] for g in trainable if g.startswith("encoder/")}
  encoder = optax.set_to_zero()
  if "encoder" in trainable or encoder_modules:
    start = t.finetune_from_step
    encoder = optax.adamw(cosine(t.encoder_learning_rate, max(schedule_steps - start, 1)),
                          weight_decay=t.weight_decay, mask=_decay_mask)
    if start > 0:
      # Zero updates before the switch, and AdamW's state untouched until then: its step count and moments begin
      # at the switch, so bias correction scales its first updates as at a fresh start (counted through the
      # frozen phase, the first updates were ~3x too large for hundreds of steps).
      encoder = optax.transforms.conditionally_mask(encoder, lambda step: step >= start)

  def labels(params):
    out = {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}
    if encoder_modules:  # only these encoder modules train; weight decay must not shrink the frozen ones
      out["encoder"] = {m: jax.tree.map(lambda _: "encoder" if m in encoder_modules else "frozen", v)
                        for m, v in params["encoder"].items()}
    return out

  transforms = {"encoder": encoder, "decoder": decoder}
  if encoder_modules:  # (only then: the optimizer state of the other regimes keeps its layout)
    transforms["frozen"] = optax.set_to_zero()
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.multi_transform(transforms, labels))


def groups(trainable: Sequence[str]) -> tuple[str, ...]:
  """The parameter groups ("encoder", "decoder") that `trainable` differentiates."""
  return tuple(dict.fromkeys(g.partition("/")[0] for g in trainable))


@dataclasses.dataclass
class Setup:
  model: CaptionModel
  tx: optax.GradientTransformation
  state: dict                       # host arrays; the trainer places them on the mesh
  trainable: tuple[str, ...]        # what trains: parameter groups, or encoder modules as "encoder/<name>"


def build(config, model: CaptionModel, variables: dict, total_steps: int,
          trainable: Sequence[str] = ("decoder",)) -> Setup:
  tx = make_optimizer(config, total_steps, trainable)
  params = variables["params"]
  with jax.ensure_compile_time_eval():  # a host array even where build is traced (jaxcap.aot builds abstractly)
    rng = np.asarray(stream(config.seed, TRAIN))
  state = {"step": np.zeros((), np.int32), "params": params, "batch_stats": variables["batch_stats"],
           "opt_state": tx.init(params), "rng": rng}
  return Setup(model, tx, state, tuple(trainable))


def make_train_step(setup: Setup, objective: Objective) -> Callable:
  """train_step(state, batch) -> (state, metrics): one optimizer step on `objective`.

  Only `setup.trainable` parameter groups are differentiated; the others get zero gradients (and the optimizer
  zero updates for the encoder modules `setup.trainable` does not name).
  """
  tx, differentiated = setup.tx, groups(setup.trainable)

  def loss_fn(trainable, params, batch_stats, batch, rng):
    loss, aux, new_stats = objective(setup.model, {**params, **trainable}, batch_stats, batch, rng)
    return loss, (aux, new_stats)

  def train_step(state, batch):
    step_rng = jax.random.fold_in(state["rng"], state["step"])  # the step's key: a function of the step alone
    params = state["params"]
    trainable = {k: params[k] for k in differentiated}
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (aux, stats)), tgrads = grad_fn(trainable, params, state["batch_stats"], batch, step_rng)
    grads = {k: tgrads[k] if k in tgrads else jax.tree.map(jnp.zeros_like, v) for k, v in params.items()}
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {"step": state["step"] + 1, "params": new_params, "batch_stats": stats, "opt_state": opt_state,
                 "rng": state["rng"]}
    m = {"loss": loss, **aux, "grad_norm": optax.global_norm(tgrads),
         "param_norm": optax.global_norm(new_params["decoder"])}
    return new_state, m

  return train_step


def make_dispatch(setup: Setup, objective: Objective, draw: Callable, steps: int) -> Callable:
  """dispatch(state, args) -> (state, the last step's metrics): `steps` optimizer steps in one call (a lax.scan,
  so a fast device does not wait on Python between steps); step i trains on draw(args, i, state["step"]), the
  feed's batch of that step (sliced from stacked host batches, or gathered from data on the devices)."""
  train_step = make_train_step(setup, objective)

  def dispatch(state, args):
    if steps == 1:  # no loop: XLA's CPU backend runs a convolution in a while loop's body several times slower
      return train_step(state, draw(args, 0, state["step"]))
    state, metrics = jax.lax.scan(lambda st, i: train_step(st, draw(args, i, st["step"])), state, jnp.arange(steps))
    return state, jax.tree.map(lambda m: m[-1], metrics)

  return dispatch


def jit_dispatch(setup: Setup, objective: Objective, draw: Callable, steps: int):
  """The jitted `make_dispatch` the trainer runs (the state donated: updated in place), and what `jaxcap.aot`
  compiles ahead of time."""
  return jax.jit(make_dispatch(setup, objective, draw, steps), donate_argnums=0)
