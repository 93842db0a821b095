"""Beam search: beam 1 equals greedy, captions for every image whether or not <end> comes, brute-force optimality,
no recompiles, the same captions as with one copy of the image per beam (in less memory), ended before live."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcap import decode
from jaxcap.data import vocab as V
from jaxcap.models.decoder import Decoder


def model(vocab_size=12, seed=0, end_bias=0.0, mode="attend", deep_output=False):
  d = Decoder(vocab_size=vocab_size, mode=mode, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0,
              deep_output=deep_output)
  grid = jnp.asarray(np.random.default_rng(seed).normal(size=(4, 2, 2, 6)), jnp.float32)
  v = jax.jit(d.init)(jax.random.key(seed), grid, jnp.zeros((4, 3), jnp.int32))
  params = jax.tree.map(lambda a: a * 3.0, v["params"])  # peakier distributions than the init's
  params["out"]["bias"] = params["out"]["bias"].at[V.END_ID].add(end_bias)
  return d, params, grid


@pytest.mark.slow
def test_beam_one_is_exactly_greedy():
  for seed in range(3):
    d, params, grid = model(seed=seed, end_bias=1.0)
    g, _ = decode.greedy(d, params, grid, max_len=8)
    b, _, _, _ = decode.beam_search(d, params, grid, beam_size=1, max_len=8)
    np.testing.assert_array_equal(np.asarray(b)[:, 0], np.asarray(g))


def test_no_end_ever_still_returns_max_length_captions_for_every_beam():
  d, params, grid = model(end_bias=-1e4)
  tokens, scores, log_probs, alphas = decode.beam_search(d, params, grid, beam_size=3, max_len=6, with_alphas=True)
  tokens = np.asarray(tokens)
  assert tokens.shape == (4, 3, 6) and (tokens != V.PAD_ID).all() and (tokens != V.END_ID).all()
  assert np.isfinite(np.asarray(scores)).all()
  assert len({tuple(r) for r in tokens[0]}) == 3  # three different beams
  assert alphas.shape == (4, 3, 6, 4)
  np.testing.assert_allclose(np.asarray(alphas).sum(-1), 1.0, atol=1e-5)


def _one_by_one(d, params, grid, **kw):
  outs = [decode.beam_search(d, params, grid[i:i + 1], **kw) for i in range(grid.shape[0])]
  return [np.concatenate([np.asarray(o[j]) for o in outs]) for j in range(4)]


@pytest.mark.slow
def test_batch_mixing_ended_and_unended_images_decodes_each_correctly():
  d, params, grid = model(end_bias=0.0)
  # Make images 0 and 2 end at once and leave 1 and 3 to run: the END logit follows the init_h input.
  grid = grid.at[jnp.array([0, 2])].mul(0.0)
  params["out"]["kernel"] = params["out"]["kernel"].at[:, V.END_ID].set(0.0)
  params["init_h"]["bias"] = params["init_h"]["bias"] * 0.0
  params["out"]["bias"] = params["out"]["bias"].at[V.END_ID].set(0.0)
  params["out"]["kernel"] = params["out"]["kernel"].at[0, V.END_ID].set(-30.0)
  params["init_h"]["kernel"] = params["init_h"]["kernel"] * 0.0
  batched = [np.asarray(a) for a in decode.beam_search(d, params, grid, beam_size=3, max_len=7)]
  single = _one_by_one(d, params, grid, beam_size=3, max_len=7)
  np.testing.assert_array_equal(batched[0], single[0])
  np.testing.assert_allclose(batched[1], single[1], rtol=1e-5, atol=1e-5)


def _score_all(d, params, grid, vocab_size, max_len, alpha):
  """Every ended sequence of length <= max_len (and every unended one of max_len) with its score."""
  state0 = d.apply({"params": params}, grid, method=Decoder.init_state)
  best = {}
  for length in range(1, max_len + 1):
    for seq in itertools.product(range(vocab_size), repeat=length):
      if V.END_ID in seq[:-1] or {V.PAD_ID, V.START_ID, V.UNK_ID} & set(seq):
        continue
      ended = seq[-1] == V.END_ID
      if not ended and length < max_len:
        continue
      state, tok, lp = state0, jnp.full((grid.shape[0],), V.START_ID), 0.0
      for t in seq:
        logits, _, state = d.apply({"params": params}, state, tok, method=Decoder.step)
        lp = lp + jax.nn.log_softmax(decode.allowed_logits(logits))[:, t]
        tok = jnp.full((grid.shape[0],), t)
      score = np.asarray(lp) / (((5 + length) / 6) ** alpha)
      best[seq] = (ended, score)
  return best


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_wide_beam_finds_the_brute_force_best(alpha):
  vocab_size, max_len = 7, 3  # 3 words + <end> allowed: every candidate fits in a beam of 4**3
  d, params, grid = model(vocab_size=vocab_size, seed=1, end_bias=1.5)
  grid = grid[:2]
  scored = _score_all(d, params, grid, vocab_size, max_len, alpha)
  tokens, scores, _, alphas = decode.beam_search(d, params, grid, beam_size=4 ** max_len,
                                                 max_len=max_len, alpha=alpha)
  for i in range(grid.shape[0]):
    ended = {s: v[1][i] for s, v in scored.items() if v[0]}
    want_seq = max(ended, key=ended.get)
    got = tuple(int(t) for t in np.asarray(tokens)[i, 0] if t != V.PAD_ID)
    assert got == want_seq, (got, want_seq)
    np.testing.assert_allclose(float(scores[i, 0]), ended[want_seq], rtol=1e-4)
    n_ended = sum(V.END_ID in row for row in np.asarray(tokens)[i])
    assert n_ended == sum(v[0] for v in scored.values())  # every ended sequence was found ...
    assert (np.diff(np.asarray(scores)[i, :n_ended]) <= 1e-6).all()  # ... and ranked best first
    # More beams than captions of length <= max_len: the rest come back empty, with no attention.
    empty = np.isneginf(np.asarray(scores)[i])
    assert empty.any() and (np.asarray(tokens)[i, empty] == V.PAD_ID).all()
    assert (np.asarray(alphas)[i, empty] == 0).all()


@pytest.mark.slow
def test_repeated_calls_never_recompile():
  d, params, grid = model()
  decode.beam_search(d, params, grid, beam_size=3, max_len=5, alpha=0.0)
  decode.greedy(d, params, grid, max_len=5)
  before = (decode.beam_search._cache_size(), decode.greedy._cache_size())
  for alpha in (0.0, 0.5, 1.0):
    decode.beam_search(d, params, grid * 2, beam_size=3, max_len=5, alpha=alpha)
    decode.greedy(d, jax.tree.map(lambda a: a + 0.1, params), grid, max_len=5)
  assert (decode.beam_search._cache_size(), decode.greedy._cache_size()) == before


def test_ended_hypotheses_rank_before_live_ones_and_each_class_by_score():
  neg = decode.NEG_INF
  # Ended scores out of order, one empty ended slot; live beams NOT sorted by score, one empty beam. Live scores
  # differ by less than float32 can tell apart at NEG_INF's magnitude (ulp 64): a NEG_INF offset would tie them.
  fin = jnp.array([[-3.0, neg, -1.0]])
  live_lp = jnp.array([[-5.0, -1.0, neg, -3.0]])
  live_scores = live_lp / 2.0
  keep, empty = decode.rank_hypotheses(fin, live_lp, live_scores, 7)
  #                      ended: -1, -3 | live: -0.5, -1.5, -2.5 | empty
  np.testing.assert_array_equal(np.asarray(keep)[0, :5], [2, 0, 4, 6, 3])
  np.testing.assert_array_equal(np.asarray(empty)[0], [False] * 5 + [True] * 2)
  # An ended hypothesis, however unlikely, ranks before every live one (a caption cut at max_len).
  keep, empty = decode.rank_hypotheses(jnp.array([[-90.0, neg]]), jnp.array([[-0.1, -0.2]]),
                                       jnp.array([[-0.1, -0.2]]), 2)
  np.testing.assert_array_equal(np.asarray(keep), [[0, 2]])
  assert not np.asarray(empty).any()


NEG_INF = -1.0e9


@functools.partial(jax.jit, static_argnames=("decoder", "beam_size", "max_len"))
def _reference_beam_search(decoder, params, grid, beam_size=3, max_len=20, alpha=0.0):
  """The reference: one decoder, every beam with its own copy of the image's constants (plain Decoder.step on
  B*K rows), the full attention history, and the final ranking by one key (ended scores; live ones offset by
  NEG_INF, right when the live beams arrive sorted, as they do here)."""
  k, b = beam_size, grid.shape[0]
  variables = {"params": params}
  alpha = jnp.asarray(alpha, jnp.float32)
  feats, att_feats, carry = decoder.apply(variables, grid, method=Decoder.init_state)
  n = feats.shape[1] if decoder.mode == "attend" else 0
  state = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), (feats, att_feats, carry))
  gather = lambda tree, idx: jax.tree.map(  # noqa: E731
      lambda x: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1), tree)
  live_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  seqs = jnp.full((b, k, max_len), V.PAD_ID, jnp.int32)
  alphas = jnp.zeros((b, k, max_len, n), jnp.float32)
  fin_scores = fin_lp = jnp.full((b, k), NEG_INF, jnp.float32)
  last = jnp.full((b, k), V.START_ID, jnp.int32)

  def cond(c):
    t, live_lp, fin_scores = c[0], c[1], c[6]
    best_live = live_lp[:, 0] / decode.length_penalty(jnp.asarray(max_len), jnp.maximum(alpha, 0.0))
    worst_fin = jnp.where(fin_scores[:, -1] > NEG_INF / 2, fin_scores[:, -1], NEG_INF)
    return (t < max_len) & jnp.any(best_live > worst_fin)

  def body(c):
    t, live_lp, seqs, alphas, state, last, fin_scores, fin_lp, fin_seqs, fin_alphas = c
    logits, alpha_t, state = decoder.apply(variables, state, last.reshape(-1), method=Decoder.step)
    logp = jax.nn.log_softmax(decode.allowed_logits(logits)).reshape(b, k, -1)
    vsize = logp.shape[-1]
    cand_lp, cand_idx = jax.lax.top_k((live_lp[:, :, None] + logp).reshape(b, k * vsize), 2 * k)
    beam, token = cand_idx // vsize, (cand_idx % vsize).astype(jnp.int32)
    c_seqs = gather(seqs, beam).at[:, :, t].set(token)
    c_alphas = gather(alphas, beam).at[:, :, t].set(gather(alpha_t.reshape(b, k, n), beam))
    is_end = token == V.END_ID
    ended = is_end & (jnp.arange(2 * k) < k)[None, :] & (cand_lp > NEG_INF / 2)
    pool_scores = jnp.concatenate(
        [fin_scores, jnp.where(ended, cand_lp / decode.length_penalty(t + 1, alpha), NEG_INF)], 1)
    keep = jax.lax.top_k(pool_scores, k)[1]
    fin_scores = jnp.take_along_axis(pool_scores, keep, 1)
    fin_lp = jnp.take_along_axis(jnp.concatenate([fin_lp, jnp.where(ended, cand_lp, NEG_INF)], 1), keep, 1)
    fin_seqs = gather(jnp.concatenate([fin_seqs, c_seqs], 1), keep)
    fin_alphas = gather(jnp.concatenate([fin_alphas, c_alphas], 1), keep)
    live_lp, pick = jax.lax.top_k(jnp.where(is_end, NEG_INF, cand_lp), k)
    src = jnp.take_along_axis(beam, pick, 1)
    seqs, alphas = gather(c_seqs, pick), gather(c_alphas, pick)
    split = jax.tree.map(lambda x: x.reshape((b, k) + x.shape[1:]), state)
    state = jax.tree.map(lambda x: x.reshape((b * k,) + x.shape[2:]), gather(split, src))
    last = jnp.take_along_axis(token, pick, 1)
    return t + 1, live_lp, seqs, alphas, state, last, fin_scores, fin_lp, fin_seqs, fin_alphas

  init = (jnp.int32(0), live_lp, seqs, alphas, state, last, fin_scores, fin_lp, seqs, alphas)
  t, live_lp, seqs, alphas, _, _, fin_scores, fin_lp, fin_seqs, fin_alphas = jax.lax.while_loop(cond, body, init)
  live_scores = live_lp / decode.length_penalty(t, alpha)
  fin_rank = jnp.where(fin_scores > NEG_INF / 2, fin_scores, 4 * NEG_INF)
  live_rank = jnp.where(live_lp > NEG_INF / 2, live_scores + NEG_INF, 3 * NEG_INF)
  rank = jnp.concatenate([fin_rank, live_rank], 1)
  keep = jax.lax.top_k(rank, k)[1]
  empty = jnp.take_along_axis(rank, keep, 1) < 2.5 * NEG_INF
  pick = lambda a, b: jnp.take_along_axis(jnp.concatenate([a, b], 1), keep, 1)  # noqa: E731
  scores = jnp.where(empty, -jnp.inf, pick(fin_scores, live_scores))
  log_probs = jnp.where(empty, -jnp.inf, pick(fin_lp, live_lp))
  tokens = jnp.where(empty[..., None], V.PAD_ID, gather(jnp.concatenate([fin_seqs, seqs], 1), keep))
  return tokens, scores, log_probs, gather(jnp.concatenate([fin_alphas, alphas], 1), keep)


@pytest.mark.slow
@pytest.mark.parametrize("mode,deep_output,k,alpha", [("attend", False, 5, 0.8), ("attend", True, 2, 0.0),
                                                     ("show_tell", False, 3, 0.5)])
def test_one_copy_of_the_image_for_all_beams_decodes_as_a_copy_per_beam(mode, deep_output, k, alpha):
  d, params, grid = model(seed=1, end_bias=0.5, mode=mode, deep_output=deep_output)
  want = _reference_beam_search(d, params, grid, k, 8, alpha)
  got = decode.beam_search(d, params, grid, k, 8, alpha, with_alphas=True)
  assert np.isfinite(np.asarray(want[1])).all()  # no empty slot (whose attention is now zeroed)
  for g, w in zip(got, want):
    assert np.asarray(g).tobytes() == np.asarray(w).tobytes()
  # Without the attention history: the same captions and scores, bit for bit, and an empty alphas.
  short = decode.beam_search(d, params, grid, k, 8, alpha, with_alphas=False)
  for g, w in zip(short[:3], want[:3]):
    assert np.asarray(g).tobytes() == np.asarray(w).tobytes()
  assert short[3].shape == (4, k, 8, 0)


@pytest.mark.slow
def test_beam_search_holds_no_copy_of_the_image_per_beam_and_no_history_unless_asked():
  b, k, (h, w, c), a, max_len = 8, 5, (7, 7, 64), 32, 20
  d = Decoder(vocab_size=12, mode="attend", embed_dim=8, hidden_dim=16, attention_dim=a, dropout=0.0)
  grid = jax.ShapeDtypeStruct((b, h, w, c), jnp.float32)
  params = jax.eval_shape(d.init, jax.random.key(0), grid, jnp.zeros((b, 3), jnp.int32))["params"]

  def temp_bytes(f):
    return jax.jit(f).lower(params, grid).compile().memory_analysis().temp_size_in_bytes

  per_beam_copies = temp_bytes(lambda p, g: _reference_beam_search(d, p, g, k, max_len))
  one_copy = temp_bytes(lambda p, g: decode.beam_search(d, p, g, k, max_len, with_alphas=True))
  no_history = temp_bytes(lambda p, g: decode.beam_search(d, p, g, k, max_len, with_alphas=False))
  n = h * w
  assert per_beam_copies - one_copy >= (k - 1) * b * n * (c + a) * 4, (per_beam_copies, one_copy)  # feats, att_feats
  assert one_copy - no_history >= b * k * max_len * n * 4, (one_copy, no_history)  # one [B, K, max_len, N] history
