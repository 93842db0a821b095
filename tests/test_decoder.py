"""The LSTM decoder: scan and single step share parameters, the hand-written attention backward equals autodiff, greedy
decoding, a step of K beams per image against one copy of the image, the CPU-only feature barrier."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcap import decode
from jaxcap.data import vocab as V
from jaxcap.models import attend_lstm
from jaxcap.models.decoder import Decoder, repeat_rows


def _setup(mode, vocab_size=12, deep_output=False):
  d = Decoder(vocab_size=vocab_size, mode=mode, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0,
              deep_output=deep_output)
  grid = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 3, 10)), jnp.float32)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, vocab_size, (3, 6)), jnp.int32)
  return d, grid, tokens, jax.jit(d.init)(jax.random.key(0), grid, tokens)


@pytest.mark.slow
@pytest.mark.parametrize("mode,deep_output", [("attend", False), ("show_tell", False), ("attend", True)])
def test_single_step_shares_parameters_with_scan(mode, deep_output):
  d, grid, tokens, v = _setup(mode, deep_output=deep_output)
  logits, alphas = jax.jit(d.apply)(v, grid, tokens)
  assert logits.shape == (3, 6, 12)
  state = d.apply(v, grid, method=Decoder.init_state)
  for t in range(6):
    step_logits, alpha, state = d.apply(v, state, tokens[:, t], method=Decoder.step)
    np.testing.assert_allclose(step_logits, logits[:, t], atol=1e-5)
    if mode == "attend":
      np.testing.assert_allclose(alpha, alphas[:, t], atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), pytest.param(jnp.bfloat16, 3e-2, marks=pytest.mark.slow)])
def test_hand_written_attention_backward_equals_autodiff(dtype, tol):
  """The training recurrence's hand-written VJP gives JAX's gradients for every input, every output used."""
  rng = np.random.default_rng(0)
  b, t, n, c, a, h = 3, 5, 4, 6, 7, 8
  r = lambda *s: jnp.asarray(rng.normal(size=s) * 0.5, jnp.float32)  # noqa: E731
  w = {"hq_k": r(h, a + c), "hq_b": r(a + c), "score_k": r(a, 1), "score_b": r(1), "lstm_k": r(c + h, 4 * h)}
  args = (w, (r(b, h), r(b, h)), r(t, b, 4 * h).astype(dtype), r(b, n, c).astype(dtype), r(b, n, a).astype(dtype))
  weights = (r(t, b, h + c), r(t, b, n), r(b, h), r(b, h))  # a loss that reads outputs, attention and carry

  def loss(scan):
    def f(*args):
      (cc, hh), (outs, alphas) = scan(*args, dtype)
      return sum(jnp.sum(x.astype(jnp.float32) * y) for x, y in zip((outs, alphas, cc, hh), weights))
    return f

  got = jax.grad(loss(attend_lstm.attend_scan), argnums=range(5))(*args)
  want = jax.grad(loss(attend_lstm._scan_reference), argnums=range(5))(*args)
  for (path, g), wnt in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    assert g.dtype == wnt.dtype, jax.tree_util.keystr(path)
    scale = max(float(jnp.max(jnp.abs(wnt.astype(jnp.float32)))), 0.1)  # score_b: exactly 0 in exact math
    err = float(jnp.max(jnp.abs(g.astype(jnp.float32) - wnt.astype(jnp.float32)))) / scale
    assert err < tol, (jax.tree_util.keystr(path), err)


def test_attention_weights_are_a_distribution_over_the_grid():
  d, grid, tokens, v = _setup("attend")
  _, alphas = d.apply(v, grid, tokens)
  assert alphas.shape == (3, 6, 6)
  np.testing.assert_allclose(alphas.sum(-1), 1.0, atol=1e-5)
  assert (alphas >= 0).all()


@pytest.mark.slow
def test_dropout_only_in_training():
  d = Decoder(vocab_size=12, mode="attend", embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.5)
  grid = jnp.ones((2, 2, 2, 4))
  tokens = jnp.ones((2, 3), jnp.int32)
  v = jax.jit(d.init)(jax.random.key(0), grid, tokens)
  a = d.apply(v, grid, tokens, train=True, rngs={"dropout": jax.random.key(1)})[0]
  b = d.apply(v, grid, tokens, train=True, rngs={"dropout": jax.random.key(2)})[0]
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(d.apply(v, grid, tokens)[0], d.apply(v, grid, tokens)[0])


def _biased(v, token, amount=100.0):
  v = jax.tree.map(lambda a: a, v)
  bias = v["params"]["out"]["bias"]
  v["params"]["out"]["bias"] = bias.at[token].add(amount)
  return v


def test_greedy_stops_at_end_and_pads_after():
  d, grid, _, v = _setup("attend")
  tokens, alphas = decode.greedy(d, _biased(v, V.END_ID)["params"], grid, max_len=5)
  assert (np.asarray(tokens)[:, 0] == V.END_ID).all()
  assert (np.asarray(tokens)[:, 1:] == V.PAD_ID).all()
  assert alphas.shape == (3, 5, 6)


def test_greedy_never_emits_unknown_or_padding():
  d, grid, _, v = _setup("attend")
  tokens, _ = decode.greedy(d, _biased(v, V.UNK_ID)["params"], grid, max_len=4)
  assert not np.isin(np.asarray(tokens), [V.UNK_ID, V.START_ID]).any()


def test_greedy_without_end_returns_max_length_captions():
  d, grid, _, v = _setup("attend")
  tokens, _ = decode.greedy(d, _biased(v, 7)["params"], grid, max_len=9)  # 7: an ordinary word
  assert np.asarray(tokens).shape == (3, 9) and (np.asarray(tokens) == 7).all()


@pytest.mark.slow
def test_sampling_is_seeded_ends_cleanly_and_its_log_probs_match_teacher_forcing():
  d, grid, _, v = _setup("attend")
  key = jax.random.key(3)
  toks, lps = decode.sample(d, v["params"], grid, key, num_samples=4, max_len=7)
  again, _ = decode.sample(d, v["params"], grid, key, num_samples=4, max_len=7)
  other, _ = decode.sample(d, v["params"], grid, jax.random.key(4), num_samples=4, max_len=7)
  toks, lps = np.asarray(toks), np.asarray(lps)
  assert toks.shape == (grid.shape[0], 4, 7) and np.array_equal(toks, np.asarray(again))
  assert not np.array_equal(toks, np.asarray(other))
  flat, flat_lp = toks.reshape(-1, 7), lps.reshape(-1, 7)
  for row in flat:  # <pad> only after <end>, never <start>/<unk>
    ends = np.flatnonzero(row == V.END_ID)
    real = row[:ends[0] + 1] if len(ends) else row
    assert not np.isin(real, [V.PAD_ID, V.START_ID, V.UNK_ID]).any()
    assert (row[len(real):] == V.PAD_ID).all()
  tf = decode.sequence_log_probs(d, v["params"], jnp.repeat(grid, 4, axis=0), jnp.asarray(flat))
  np.testing.assert_allclose(np.asarray(tf), flat_lp, atol=1e-5)
  # Each image once with its 4 captions consecutive (its constants computed once): the same function.
  per_image = lambda p: decode.sequence_log_probs(d, p, grid, jnp.asarray(flat))  # noqa: E731
  np.testing.assert_allclose(np.asarray(per_image(v["params"])), flat_lp, atol=1e-5)
  grad = jax.grad(lambda p: decode.sequence_log_probs(d, p, jnp.repeat(grid, 4, axis=0), jnp.asarray(flat)).sum())(
      v["params"])
  assert np.abs(np.asarray(grad["out"]["kernel"])).sum() > 0
  grad_per_image = jax.grad(lambda p: per_image(p).sum())(v["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad_per_image, grad)
  with pytest.raises(ValueError, match="7 captions do not divide among 3 images"):
    decode.sequence_log_probs(d, v["params"], grid, jnp.asarray(flat[:7]))


@pytest.mark.parametrize("deep_output", [pytest.param(False, marks=pytest.mark.slow), True])
def test_autodiff_nn_scan_and_manual_backward_are_the_same_function(deep_output):
  manual, grid, tokens, v = _setup("attend", deep_output=deep_output)
  autodiff = manual.clone(attention_backward="autodiff")
  assert jax.tree.structure(jax.jit(autodiff.init)(jax.random.key(0), grid, tokens)) == jax.tree.structure(v)

  def loss(d, p):
    logits, alphas = d.apply({"params": p}, grid, tokens)
    return jnp.sum(jax.nn.log_softmax(logits)[..., 2]) + jnp.sum(alphas ** 2)

  (lm, gm), (la, ga) = (jax.jit(jax.value_and_grad(lambda p, d=d: loss(d, p)))(v["params"]) for d in (manual, autodiff))
  np.testing.assert_allclose(lm, la, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), gm, ga)


@pytest.mark.slow
def test_dropout_masks_do_not_depend_on_the_padded_length():
  # Several steps per dispatch pad a batch to the longest of the dispatch; the real tokens' logits must not change.
  d = Decoder(vocab_size=12, mode="attend", embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.5,
              embed_dropout=0.3)
  grid = jnp.ones((2, 2, 2, 4))
  tokens = jnp.asarray([[1, 5, 6, 2], [1, 7, 2, 0]], jnp.int32)
  v = jax.jit(d.init)(jax.random.key(0), grid, tokens)
  short = d.apply(v, grid, tokens, train=True, rngs={"dropout": jax.random.key(3)})[0]
  padded = jnp.pad(tokens, ((0, 0), (0, 4)))
  long = d.apply(v, grid, padded, train=True, rngs={"dropout": jax.random.key(3)})[0]
  np.testing.assert_allclose(long[:, :4], short, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["attend", "show_tell"])
def test_a_step_of_k_beams_per_image_reads_one_copy_of_the_image(mode):
  d, grid, _, v = _setup(mode)
  feats, att_feats, carry = d.apply(v, grid, method=Decoder.init_state)
  k = 4
  # Each image's K rows differ (their own carries and tokens), as beams do.
  carry = jax.tree.map(lambda x: repeat_rows(x, k) * jnp.linspace(0.5, 1.5, k * x.shape[0])[:, None], carry)
  toks = jnp.asarray(np.random.default_rng(2).integers(3, 12, k * grid.shape[0]), jnp.int32)
  step = jax.jit(lambda state, toks, beams: d.apply(v, state, toks, beams, method=Decoder.step), static_argnums=2)
  want = step(repeat_rows((feats, att_feats), k) + (carry,), toks, 1)
  got = step((feats, att_feats, carry), toks, k)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)   # logits
  np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)   # attention
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got[2][2], want[2][2])
  assert got[2][0].shape == feats.shape  # the state keeps one copy per image


def test_the_feature_barrier_is_in_programs_lowered_for_cpu_only():
  # A float16 grid (cached features): the barrier keeps XLA:CPU from repeating the cast in every fusion; lowered
  # for another platform (a CPU host compiling ahead of time for TPU) the program has none.
  d, _, tokens, v = _setup("attend")
  grid = jnp.zeros((3, 2, 3, 10), jnp.float16)
  for f, args in ((lambda v, g: d.apply(v, g, method=Decoder.init_state), (v, grid)),
                  (lambda v, g, t: d.apply(v, g, t), (v, grid, tokens))):
    traced = jax.jit(f).trace(*args)
    hlo = {p: traced.lower(lowering_platforms=(p,)).as_text(dialect="hlo") for p in ("cpu", "tpu", "cuda")}
    assert "opt-barrier" in hlo["cpu"]
    assert "opt-barrier" not in hlo["tpu"] and "opt-barrier" not in hlo["cuda"]
    assert "opt-barrier" in jax.jit(f).lower(*args).as_text(dialect="hlo")  # this (CPU) host's own programs


def test_weight_gradients_contract_time_and_batch_without_merging_rows_on_gpus():
  """On GPUs the weight gradients contract (T, B) as two axes, so a batch-sharded step reduces partial sums
  instead of gathering every device's rows (XLA:GPU's partitioner did, 289 MB a step on 8 H100s); CPU and TPU
  keep the one 2-D matmul of merged rows. Same values either way."""
  from jaxcap.models import attend_lstm

  x, y = jax.random.normal(jax.random.key(0), (3, 4, 5)), jax.random.normal(jax.random.key(1), (3, 4, 6))
  f = jax.jit(lambda x, y: attend_lstm._rows_t_matmul(x, y, jnp.float32))
  hlo = {p: f.trace(x, y).lower(lowering_platforms=(p,)).as_text(dialect="hlo") for p in ("cpu", "tpu", "cuda")}
  two_axes = re.compile(r"lhs_contracting_dims=\{[01],[01]\}")
  assert two_axes.search(hlo["cuda"])
  assert not two_axes.search(hlo["cpu"]) and not two_axes.search(hlo["tpu"])
  np.testing.assert_allclose(f(x, y), np.einsum("tbk,tbm->km", x, y), rtol=1e-5)
