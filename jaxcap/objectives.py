"""What a train step minimizes: an `Objective` is objective(model, params, batch_stats, batch, rng) -> (loss,
metrics {name: scalar}, batch_stats). `cross_entropy` on a `Forward` (the decoder on cached grids,
`decoder_forward`, the whole model on images, `image_forward`, or the encoder's top on cached trunks,
`top_forward`), or `self_critical`, the policy gradient of
sampled captions rewarded by CIDEr-D (`CiderReward`). A feed names the objectives it trains with;
`train_state.make_train_step` differentiates one.
"""
from __future__ import annotations

import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from jaxcap import decode
from jaxcap.cider import CiderD
from jaxcap.data import vocab as vocab_lib
from jaxcap.models.caption_model import CaptionModel

# forward(model, params, batch_stats, batch, inputs, rng) -> (logits [B, T, V], alphas [B, T, N], batch_stats):
# a feed's way of running the model on its batches (features or images).
Forward = Callable[..., tuple]
# The step's key (`train_state`: the run's TRAIN stream folded with the step) is split by purpose with fold_in,
# so dropout masks and sampled captions never share draws.
DROPOUT, SAMPLING = 0, 1
# objective(model, params, batch_stats, batch, rng) -> (loss, metrics {name: scalar}, batch_stats): what a step
# minimizes (cross-entropy on a forward, or the self-critical policy gradient).
Objective = Callable[..., tuple]


def cross_entropy(config, forward: Forward) -> Objective:
  """Teacher-forced cross-entropy (label smoothing optional) plus the doubly stochastic attention penalty."""
  t = config.train

  def objective(model: CaptionModel, params, batch_stats, batch, rng):
    decoder = model.decoder
    inputs, targets, mask = batch["tokens"][:, :-1], batch["tokens"][:, 1:], batch["mask"][:, 1:]
    dropout = jax.random.fold_in(rng, DROPOUT)
    logits, alphas, new_stats = forward(model, params, batch_stats, batch, inputs, dropout)
    if t.label_smoothing:
      labels = optax.smooth_labels(jax.nn.one_hot(targets, decoder.vocab_size), t.label_smoothing)
      xent = optax.softmax_cross_entropy(logits, labels)
    else:  # the target's logit gathered: no dense [B, T, V] one-hot to build, and read again in the backward pass
      xent = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    ntok = jnp.maximum(mask.sum(), 1.0)
    ce = (xent * mask).sum() / ntok
    penalty = jnp.float32(0.0)
    if decoder.mode == "attend" and t.attention_penalty:
      attended = (alphas * mask[:, :, None]).sum(1)                           # [B, N]
      penalty = t.attention_penalty * jnp.mean((1.0 - attended) ** 2)
    return ce + penalty, {"ce": ce, "attention_penalty": penalty, "tokens": ntok}, new_stats

  return objective


def data_mesh(devices=None) -> Mesh:
  """`devices` (default: every device of every process) on one `data` axis: the mesh the trainer shards its
  batches over, and the one `jaxcap.aot` compiles for."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def self_critical(config, reward: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  mesh: Mesh | None = None) -> Objective:
  """Self-critical sequence training (Rennie et al. 2017): `train.scst_samples` captions sampled per image
  (batch["grid"]), scored on the host by `reward(tokens [B, S, L], batch["image_index"] [B]) -> [B, S]`, and the
  policy gradient -(reward - baseline) * log p(caption), averaged over the sampled tokens (<end> included).
  The baseline (`train.scst_baseline`): "others", the mean reward of the same image's other samples (Luo 2020),
  or "greedy", the reward of the image's greedy caption (Rennie et al.).

  The batch is sharded over the `data` axis of `mesh` (default `data_mesh()`, the trainer's), and each device's
  samples are scored by the process that holds them, on that device's rows only: no device's samples travel to
  another, and the processes score at the same time. A process's devices call `reward` one at a time (XLA calls
  back from one thread per device; a reward may keep state, as CiderD's word ids do)."""
  t = config.train
  n = t.scst_samples
  one_at_a_time = threading.Lock()

  def host_reward(tokens, index):
    with one_at_a_time:
      return np.asarray(reward(np.asarray(tokens), np.asarray(index)), np.float32)

  def score(tokens, index):
    def local(tk, ix):  # this device's rows
      return jax.pure_callback(host_reward, jax.ShapeDtypeStruct(tk.shape[:2], jnp.float32), tk, ix)
    return jax.shard_map(local, mesh=mesh or data_mesh(), in_specs=(P("data"), P("data")),
                         out_specs=P("data"))(tokens, index)

  def objective(model: CaptionModel, params, batch_stats, batch, rng):
    grid = batch["grid"]
    b = grid.shape[0]
    frozen = jax.lax.stop_gradient(params["decoder"])
    tokens, _ = decode.sample(model.decoder, frozen, grid, jax.random.fold_in(rng, SAMPLING), n, t.decode_max_len,
                              t.scst_temperature)
    rewards = score(tokens, batch["image_index"])
    if t.scst_baseline == "greedy":
      greedy, _ = decode.greedy(model.decoder, frozen, grid, t.decode_max_len)
      baseline = score(greedy[:, None], batch["image_index"])
    else:
      baseline = (rewards.sum(1, keepdims=True) - rewards) / (n - 1)
    advantage = rewards - baseline
    flat = tokens.reshape(b * n, -1)
    logp = decode.sequence_log_probs(model.decoder, params["decoder"], grid, flat)
    ntok = jnp.maximum(decode.caption_mask(flat).sum(), 1.0)
    loss = -(advantage.reshape(-1, 1) * logp).sum() / ntok
    return loss, {"reward": rewards.mean(), "advantage_abs": jnp.abs(advantage).mean(), "tokens": ntok}, batch_stats

  return objective


def decoder_forward(model: CaptionModel, params, batch_stats, batch, inputs, rng):
  """The decoder on cached feature grids (batch["grid"]); the encoder is not run."""
  logits, alphas = model.decoder.apply({"params": params["decoder"]}, batch["grid"], inputs, train=True,
                                       rngs={"dropout": rng})
  return logits, alphas, batch_stats


def image_forward(train_encoder: bool) -> Forward:
  """Encoder + decoder on images (batch["image"]); the encoder trains (batch statistics updated) only when
  `train_encoder`, else its output is a constant."""
  def forward(model: CaptionModel, params, batch_stats, batch, inputs, rng):
    variables = {"params": params, "batch_stats": batch_stats}
    if not train_encoder:
      logits, alphas = model.apply(variables, batch["image"], inputs, train=True, rngs={"dropout": rng})
      return logits, alphas, batch_stats
    (logits, alphas), upd = model.apply(variables, batch["image"], inputs, train=True, train_encoder=True,
                                        rngs={"dropout": rng}, mutable=["batch_stats"])
    return logits, alphas, upd["batch_stats"]
  return forward


def top_forward(start: int, per_image: int) -> Forward:
  """The decoder on grids that the encoder's layers from `start` on compute from cached trunks (batch["trunk"]),
  BatchNorm in inference mode. Image-major batches (`per_image` captions of one image side by side,
  `batching.ImageMajorSchedule`) run the top once per image and share its grid among the image's captions."""
  def forward(model: CaptionModel, params, batch_stats, batch, inputs, rng):
    trunk = batch["trunk"]
    trunk = trunk.reshape((-1, per_image) + trunk.shape[1:])[:, 0]
    grid = model.apply({"params": params, "batch_stats": batch_stats}, trunk, start, method=CaptionModel.encode_top)
    grid = jnp.repeat(grid, per_image, axis=0)
    logits, alphas = model.decoder.apply({"params": params["decoder"]}, grid, inputs, train=True,
                                         rngs={"dropout": rng})
    return logits, alphas, batch_stats
  return forward


class CiderReward:
  """CIDEr-D of sampled captions against their train image's references, with document frequencies from all
  train references; <end> counts as a word on both sides, so a caption that stops mid-phrase ("a man in a")
  loses the n-grams that end the references."""

  def __init__(self, vocab: vocab_lib.Vocab, train: tuple[list[str], dict]):
    self.vocab = vocab
    self.refs = [[" ".join(vocab_lib.normalize(c) + [vocab_lib.END]) for c in train[1][n]] for n in train[0]]
    self.scorer = CiderD(self.refs)

  def text(self, tokens: np.ndarray) -> str:
    ended = (tokens == vocab_lib.END_ID).any()
    return " ".join(self.vocab.to_text(tokens).split() + ([vocab_lib.END] if ended else []))

  def __call__(self, tokens: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """tokens [B, S, L], image_index [B] (rows of the train split) -> rewards [B, S]."""
    b, n, length = tokens.shape
    hyps = [self.text(t) for t in tokens.reshape(-1, length)]
    return self.scorer.score(hyps, self.refs, ref_index=np.repeat(image_index, n)).reshape(b, n)
