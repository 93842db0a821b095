"""Beam search: beam 1 equals greedy, captions for every image whether or not <end> comes, brute-force optimality, no recompiles."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcap import decode
from jaxcap.data import vocab as V
from jaxcap.models.decoder import Decoder


def model(vocab_size=12, seed=0, end_bias=0.0):
  d = Decoder(vocab_size=vocab_size, mode="attend", embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0)
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
  tokens, scores, log_probs, alphas = decode.beam_search(d, params, grid, beam_size=3, max_len=6)
  tokens = np.asarray(tokens)
  assert tokens.shape == (4, 3, 6) and (tokens != V.PAD_ID).all() and (tokens != V.END_ID).all()
  assert np.isfinite(np.asarray(scores)).all()
  assert len({tuple(r) for r in tokens[0]}) == 3  # three different beams
  assert alphas.shape == (4, 3, 6, 4)


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
  tokens, scores, _, _ = decode.beam_search(d, params, grid, beam_size=4 ** max_len,
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
