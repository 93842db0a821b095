"""Caption decoding, jit-compiled and batched over images: greedy, beam search, sampling, and the
log-probability of given captions (teacher-forced, differentiable: what self-critical training needs).

Decoders are addressed through `Decoder.init_state` / `Decoder.step`, so this module knows nothing of files or
checkpoints. Greedy and beam search also take an ensemble: a tuple of decoders (same vocabulary) with a tuple of
their params, and either one feature grid they all read or a tuple of grids, one per member (members trained on
different encoders). Every step then scores a word by the mean of the members' log-probabilities
(a product of experts: a word must suit every member; the log of the mean probability would let one confident
member carry it), so a caption's beam log-probability is the mean of the members' log-probabilities of it. A
single decoder is an ensemble of one, and the mean of one member is that member bit for bit.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcap.data import vocab as vocab_lib
from jaxcap.models.decoder import Decoder, repeat_rows


def allowed_logits(logits: jax.Array) -> jax.Array:
  """<pad>, <start> and <unk> are never emitted: a caption with "<unk>" is never what a user wants."""
  banned = jnp.zeros(logits.shape[-1], bool).at[jnp.array([vocab_lib.PAD_ID, vocab_lib.START_ID,
                                                          vocab_lib.UNK_ID])].set(True)
  return jnp.where(banned, -1e9, logits)


Members = Decoder | tuple[Decoder, ...]   # one decoder, or an ensemble's (with a tuple of their params)
Grids = jax.Array | tuple[jax.Array, ...]  # one grid for every member, or one per member


def members(decoder, params) -> tuple[tuple[Decoder, ...], tuple]:
  """(decoders, params) as tuples: a single decoder is an ensemble of one."""
  return (tuple(decoder), tuple(params)) if isinstance(decoder, tuple) else ((decoder,), (params,))


def _mean(xs: list[jax.Array]) -> jax.Array:
  """The members' mean; for one member x / 1, which is x exactly (so N = 1 is the single decoder bit for bit)."""
  return sum(xs[1:], xs[0]) / len(xs)


def member_grids(decoders, grid) -> tuple[jax.Array, ...]:
  """One grid [B, h, w, C] per member: `grid` itself when all members read the same one, else the tuple given."""
  grids = tuple(grid) if isinstance(grid, (tuple, list)) else (grid,) * len(decoders)
  if len(grids) != len(decoders):
    raise ValueError(f"{len(grids)} feature grids for {len(decoders)} ensemble members")
  return grids


def _init(decoders, params, grids):
  """Every member's per-image constants (feats, att_feats) and LSTM carry, for its grid [B, h, w, C]."""
  states = [d.apply({"params": p}, g, method=Decoder.init_state) for d, p, g in zip(decoders, params, grids)]
  return tuple(s[:2] for s in states), tuple(s[2] for s in states)


def _step(decoders, params, consts, carries, tokens, n: int, beams: int = 1):
  """One step of every member: their logits ([R, V] each), the mean attention [R, n] of the attending members
  over n positions (the first attending member's grid; empty when none attends) and the new carries. R rows:
  consts hold B images, carries and tokens B * beams rows (each image's beams consecutive)."""
  outs = [d.apply({"params": p}, c + (carry,), tokens, beams, method=Decoder.step)
          for d, p, c, carry in zip(decoders, params, consts, carries)]
  alphas = [o[1] for o in outs]
  return [o[0] for o in outs], _mean([a for a in alphas if a.shape[-1] == n]), tuple(o[2][2] for o in outs)


def _attention_size(decoders, grids) -> int:
  """Positions of the attention maps returned: the first attending member's grid (members on grids of another
  size are left out of the map), 0 when no member attends."""
  return next((g.shape[1] * g.shape[2] for d, g in zip(decoders, grids) if d.mode == "attend"), 0)


@functools.partial(jax.jit, static_argnames=("decoder", "max_len"))
def greedy(decoder: Members, params, grid: Grids, max_len: int = 20):
  """Greedy captions for grid [B, h, w, C]: tokens [B, max_len] (<pad> after <end>), alphas [B, max_len, N].

  Stops early (lax.while_loop) once every caption has emitted <end>. An ensemble takes the argmax of the mean
  of the members' logits: the same word as the argmax of their mean log-probability (the log-normalizers are
  one constant per row), and for one member exactly the argmax of its logits.
  """
  decoders, params = members(decoder, params)
  grids = member_grids(decoders, grid)
  consts, carries = _init(decoders, params, grids)
  b = grids[0].shape[0]
  n = _attention_size(decoders, grids)
  tokens = jnp.full((b, max_len), vocab_lib.PAD_ID, jnp.int32)
  alphas = jnp.zeros((b, max_len, n), jnp.float32)

  def cond(c):
    t, _, _, done, _, _ = c
    return (t < max_len) & ~jnp.all(done)

  def body(c):
    t, carries, prev, done, tokens, alphas = c
    logits, alpha, carries = _step(decoders, params, consts, carries, prev, n)
    best = jnp.argmax(_mean([allowed_logits(lg) for lg in logits]), -1).astype(jnp.int32)
    nxt = jnp.where(done, vocab_lib.PAD_ID, best)
    tokens = tokens.at[:, t].set(nxt)
    alphas = alphas.at[:, t].set(alpha)
    return t + 1, carries, nxt, done | (nxt == vocab_lib.END_ID), tokens, alphas

  start = jnp.full((b,), vocab_lib.START_ID, jnp.int32)
  init = (jnp.int32(0), carries, start, jnp.zeros((b,), bool), tokens, alphas)
  _, _, _, _, tokens, alphas = jax.lax.while_loop(cond, body, init)
  return tokens, alphas


@functools.partial(jax.jit, static_argnames=("decoder", "num_samples", "max_len"))
def sample(decoder: Decoder, params, grid: jax.Array, rng: jax.Array, num_samples: int = 5, max_len: int = 20,
           temperature: float | jax.Array = 1.0):
  """`num_samples` captions per image of grid [B, h, w, C], each token drawn from softmax(logits / temperature).

  Returns tokens [B, S, max_len] (<pad> after <end>) and log_probs [B, S, max_len]: the log-probability of each
  drawn token under the distribution it was drawn from (0 after <end>). Not differentiated: use
  `sequence_log_probs` for gradients. `temperature` is traced: changing it never recompiles.
  """
  variables = {"params": params}
  b = grid.shape[0]
  state = repeat_rows(decoder.apply(variables, grid, method=Decoder.init_state), num_samples)  # B*S rows
  temperature = jnp.asarray(temperature, jnp.float32)

  def body(c, t):
    state, prev, done = c
    logits, _, state = decoder.apply(variables, state, prev, method=Decoder.step)
    logp = jax.nn.log_softmax(allowed_logits(logits) / temperature)
    tok = jax.random.categorical(jax.random.fold_in(rng, t), logp).astype(jnp.int32)
    tok = jnp.where(done, vocab_lib.PAD_ID, tok)
    lp = jnp.where(done, 0.0, jnp.take_along_axis(logp, tok[:, None], 1)[:, 0])
    return (state, tok, done | (tok == vocab_lib.END_ID)), (tok, lp)

  start = jnp.full((b * num_samples,), vocab_lib.START_ID, jnp.int32)
  _, (tokens, log_probs) = jax.lax.scan(body, (state, start, jnp.zeros_like(start, bool)), jnp.arange(max_len))
  shape = (b, num_samples, max_len)
  return tokens.T.reshape(shape), log_probs.T.reshape(shape)


def sequence_log_probs(decoder: Decoder, params, grid: jax.Array, tokens: jax.Array, train: bool = False,
                       rng: jax.Array | None = None) -> jax.Array:
  """Per-token log-probabilities [N, L] of given captions tokens [N, L] (as `sample` or `greedy` return them:
  no <start>, <pad> after <end>) under the decoder, teacher-forced on those tokens; 0 after <end>. grid holds
  N images, or N / k images each with k consecutive captions (as `sample` returns them, flattened).
  Differentiable in params (self-critical training's policy gradient)."""
  per_image, rest = divmod(tokens.shape[0], grid.shape[0])
  if rest:
    raise ValueError(f"{tokens.shape[0]} captions do not divide among {grid.shape[0]} images")
  inputs = jnp.concatenate([jnp.full(tokens.shape[:1] + (1,), vocab_lib.START_ID, tokens.dtype), tokens[:, :-1]], 1)
  rngs = {"dropout": rng} if train else {}
  logits, _ = decoder.apply({"params": params}, grid, inputs, train=train, captions_per_image=per_image, rngs=rngs)
  logp = jnp.take_along_axis(jax.nn.log_softmax(allowed_logits(logits)), tokens[..., None], -1)[..., 0]
  return jnp.where(caption_mask(tokens), logp, 0.0)


def caption_mask(tokens: jax.Array) -> jax.Array:
  """[N, L] bool: the real tokens of captions tokens [N, L], everything up to and including the first <end>."""
  ended_before = jnp.cumsum(tokens == vocab_lib.END_ID, axis=1) - (tokens == vocab_lib.END_ID)
  return (ended_before == 0) & (tokens != vocab_lib.PAD_ID)


NEG_INF = -1.0e9


def length_penalty(length: jax.Array, alpha: jax.Array) -> jax.Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha; alpha = 0 scores by the plain log-probability."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _gather(tree, idx):
  """x [B, K, ...] for every leaf, idx [B, M] -> [B, M, ...]."""
  return jax.tree.map(lambda x: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1), tree)


def _split_beams(tree, b, k):
  return jax.tree.map(lambda x: x.reshape((b, k) + x.shape[1:]), tree)


def _merge_beams(tree):
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


ENDED, LIVE, EMPTY = 0, 1, 2  # the classes of returned hypotheses, in the order they are ranked


def rank_hypotheses(fin_scores: jax.Array, live_lp: jax.Array, live_scores: jax.Array, k: int):
  """The k hypotheses to return, best first, from the ended ones (fin_scores [B, K1]; NEG_INF: an empty slot) and
  the live ones (live_lp [B, K2], NEG_INF: an empty beam; ranked by live_scores): every ended hypothesis before
  every live one, each class by its score (not assumed sorted), empty slots last. -> (indices [B, k] into the
  two concatenated, empty [B, k] bool)."""
  cls = jnp.concatenate([jnp.where(fin_scores > NEG_INF / 2, ENDED, EMPTY),
                         jnp.where(live_lp > NEG_INF / 2, LIVE, EMPTY)], 1).astype(jnp.int32)
  score = jnp.concatenate([fin_scores, live_scores], 1)
  idx = jnp.broadcast_to(jnp.arange(score.shape[1], dtype=jnp.int32), score.shape)
  # Two keys (class, then score) rather than one score offset per class: an offset as large as NEG_INF would
  # round the scores away in float32. Stable: ties keep the lower index first, as top_k does.
  cls, _, idx = jax.lax.sort((cls, -score, idx), dimension=1, num_keys=2, is_stable=True)
  return idx[:, :k], cls[:, :k] == EMPTY


@functools.partial(jax.jit, static_argnames=("decoder", "beam_size", "max_len", "with_alphas"))
def beam_search(decoder: Members, params, grid: Grids, beam_size: int = 3, max_len: int = 20,
                alpha: float | jax.Array = 0.0, with_alphas: bool = False):
  """Beam search for grid [B, h, w, C], batched over images.

  Returns tokens [B, K, max_len] (<pad> after <end>), scores [B, K] (log-probability / length penalty, best
  first), log_probs [B, K] (plain sum) and alphas [B, K, max_len, N] (attention of every token); with
  `with_alphas=False`, alphas [B, K, max_len, 0] and the loop keeps no attention history (for callers that show
  no attention maps: the history is carried, gathered and copied at every step, K * max_len maps per image).
  An ended hypothesis never grows again and keeps its score; a hypothesis that reaches max_len without <end>
  is returned as it is (ranked after every ended one), so every image always gets K captions (slots beyond what
  the model can say come back empty: <pad>, score -inf, zero attention). The loop stops once no live beam can
  beat the worst kept ended one. `alpha` is traced: changing it never recompiles. The image's constants are
  kept once per image, not once per beam: the K beams attend the same copy (`Decoder.step`'s beams).
  An ensemble extends hypotheses by the mean of the members' log-probabilities (log_probs: the mean of the
  members' caption log-probabilities; alphas: the mean attention of the attending members).
  """
  k = beam_size
  decoders, params = members(decoder, params)
  alpha = jnp.asarray(alpha, jnp.float32)
  grids = member_grids(decoders, grid)
  b = grids[0].shape[0]
  consts, carries = _init(decoders, params, grids)
  n = _attention_size(decoders, grids)
  n_hist = n if with_alphas else 0
  carries = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), carries)  # [B, ...] -> [B*K, ...]
  # Only beam 0 is live at the start, so the first step does not pick K copies of the same word.
  live_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  seqs = jnp.full((b, k, max_len), vocab_lib.PAD_ID, jnp.int32)
  alphas = jnp.zeros((b, k, max_len, n_hist), jnp.float32)
  fin_seqs, fin_alphas = seqs, alphas
  fin_scores = jnp.full((b, k), NEG_INF, jnp.float32)
  fin_lp = jnp.full((b, k), NEG_INF, jnp.float32)
  last = jnp.full((b, k), vocab_lib.START_ID, jnp.int32)

  def cond(c):
    t, live_lp, fin_scores = c[0], c[1], c[6]
    # Log-probabilities only fall, and the penalty is largest at max_len: the best any live beam can reach.
    best_live = live_lp[:, 0] / length_penalty(jnp.asarray(max_len), jnp.maximum(alpha, 0.0))
    worst_fin = jnp.where(fin_scores[:, -1] > NEG_INF / 2, fin_scores[:, -1], NEG_INF)
    can_improve = jnp.any(best_live > worst_fin)
    return (t < max_len) & can_improve

  def body(c):
    t, live_lp, seqs, alphas, carries, last, fin_scores, fin_lp, fin_seqs, fin_alphas = c
    logits, alpha_t, carries = _step(decoders, params, consts, carries, last.reshape(-1), n, k)
    logp = _mean([jax.nn.log_softmax(allowed_logits(lg)) for lg in logits]).reshape(b, k, -1)
    vsize = logp.shape[-1]
    cand = (live_lp[:, :, None] + logp).reshape(b, k * vsize)
    cand_lp, cand_idx = jax.lax.top_k(cand, 2 * k)                        # 2k: k may end at once
    beam, token = cand_idx // vsize, (cand_idx % vsize).astype(jnp.int32)
    c_seqs = _gather(seqs, beam).at[:, :, t].set(token)
    c_alphas = _gather(alphas, beam).at[:, :, t].set(_gather(alpha_t[:, :n_hist].reshape(b, k, n_hist), beam))
    is_end = token == vocab_lib.END_ID
    # A hypothesis ends only if its <end> ranks among the k best extensions (so beam 1 is exactly greedy);
    # an <end> further down is dropped, never kept live.
    ended = is_end & (jnp.arange(2 * k) < k)[None, :] & (cand_lp > NEG_INF / 2)  # not from an empty beam
    # Ended candidates join the finished pool with their length-normalized score.
    new_scores = jnp.where(ended, cand_lp / length_penalty(t + 1, alpha), NEG_INF)
    pool_scores = jnp.concatenate([fin_scores, new_scores], 1)
    keep = jax.lax.top_k(pool_scores, k)[1]
    fin_scores = jnp.take_along_axis(pool_scores, keep, 1)
    fin_lp = jnp.take_along_axis(jnp.concatenate([fin_lp, jnp.where(ended, cand_lp, NEG_INF)], 1), keep, 1)
    fin_seqs = _gather(jnp.concatenate([fin_seqs, c_seqs], 1), keep)
    fin_alphas = _gather(jnp.concatenate([fin_alphas, c_alphas], 1), keep)
    # The k best candidates that did not end stay live.
    live_scores = jnp.where(is_end, NEG_INF, cand_lp)
    live_lp, pick = jax.lax.top_k(live_scores, k)
    src = jnp.take_along_axis(beam, pick, 1)
    seqs, alphas = _gather(c_seqs, pick), _gather(c_alphas, pick)
    # Only the LSTM carries follow their beam: the image's constants are shared by its K beams.
    carries = _merge_beams(_gather(_split_beams(carries, b, k), src))
    last = jnp.take_along_axis(token, pick, 1)
    return t + 1, live_lp, seqs, alphas, carries, last, fin_scores, fin_lp, fin_seqs, fin_alphas

  init = (jnp.int32(0), live_lp, seqs, alphas, carries, last, fin_scores, fin_lp, fin_seqs, fin_alphas)
  t, live_lp, seqs, alphas, _, _, fin_scores, fin_lp, fin_seqs, fin_alphas = jax.lax.while_loop(cond, body, init)
  # Unended live beams fill the slots no ended hypothesis took, so an image with no ended hypothesis still gets K.
  live_scores = live_lp / length_penalty(t, alpha)
  keep, empty = rank_hypotheses(fin_scores, live_lp, live_scores, k)
  pick = lambda a, b: jnp.take_along_axis(jnp.concatenate([a, b], 1), keep, 1)  # noqa: E731
  scores = jnp.where(empty, -jnp.inf, pick(fin_scores, live_scores))
  log_probs = jnp.where(empty, -jnp.inf, pick(fin_lp, live_lp))
  tokens = jnp.where(empty[..., None], vocab_lib.PAD_ID, _gather(jnp.concatenate([fin_seqs, seqs], 1), keep))
  alphas = jnp.where(empty[..., None, None], 0.0, _gather(jnp.concatenate([fin_alphas, alphas], 1), keep))
  return tokens, scores, log_probs, alphas
