"""The Show-Attend-Tell recurrence as plain functions of its weights, with a hand-written backward pass.

`attend_step` is one step (used by greedy and beam search and, scanned, by training); `attend_scan` runs it
over T steps. Why the backward is written by hand (the profile in bench/README.md): differentiating a
`lax.scan` makes XLA accumulate each weight's gradient inside the backward loop, a [64, 1792] x [64, 2048]
matmul plus a read-modify-write of the 14.7 MB LSTM kernel gradient at every step, and it stores the
[B, N, A] attention energies of every step. Here the backward loop only passes activations' cotangents; the
weight gradients are formed after the loop as single matmuls over all T*B rows, and the energies are
recomputed (one tanh) instead of stored. Same math: `tests/test_decoder.py` checks the gradients against
JAX's autodiff of the plain scan.

Weights: `hq_k` [H, A + C], `hq_b` [A + C] (the query and the context gate both read h), `score_k` [A, 1],
`score_b` [1], `lstm_k` [C + H, 4H] (reads [context; h]). Shapes: feats [B, N, C], att_feats [B, N, A]
(the grid's attention projection, hoisted out of the loop), x_gates [B, 4H] per step (the embedding's part
of the gates, hoisted too).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

f32 = jnp.float32


def lstm_update(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  i, f, g, o = jnp.split(gates.astype(f32), 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return c, jax.nn.sigmoid(o) * jnp.tanh(c)


def _attend(w, h, feats, att_feats, dtype):
  """(hq, alpha, context before the gate, gate) of one step."""
  hq = (h.astype(dtype) @ w["hq_k"].astype(dtype) + w["hq_b"].astype(dtype))
  a = att_feats.shape[-1]
  query, beta = hq[:, :a], hq[:, a:]
  energy = jnp.tanh(att_feats + query[:, None, :].astype(att_feats.dtype))
  scores = (energy.astype(dtype) @ w["score_k"].astype(dtype))[..., 0] + w["score_b"].astype(dtype)
  alpha = jax.nn.softmax(scores.astype(f32), axis=-1)                                # [B, N]
  ctx0 = jnp.einsum("bn,bnc->bc", alpha.astype(feats.dtype), feats)
  gate = jax.nn.sigmoid(beta.astype(f32))
  return hq, alpha, ctx0, gate


def _step(w, carry, x_gates, feats, att_feats, dtype):
  """One step -> (carry, outputs, what the hand-written backward needs: small per-step tensors, no
  [B, N, A] energies)."""
  c_prev, h_prev = carry
  hq, alpha, ctx0, gate = _attend(w, h_prev, feats, att_feats, dtype)
  context = (ctx0.astype(f32) * gate).astype(dtype)
  zh = jnp.concatenate([context, h_prev.astype(dtype)], axis=-1)
  gates = (x_gates + zh @ w["lstm_k"].astype(dtype)).astype(f32)
  c, h = lstm_update(gates, c_prev)
  return (c, h), (jnp.concatenate([h.astype(dtype), context], -1), alpha), (zh, c_prev, gates, c, hq, alpha, ctx0)


def attend_step(w, carry, x_gates, feats, att_feats, dtype: Any = f32):
  """One step: soft attention (Xu et al. 2015, with the gating scalar beta), then the LSTM.

  carry (c, h) -> (carry, ([h; context] for the output layer, alpha [B, N])).
  """
  carry, ys, _ = _step(w, carry, x_gates, feats, att_feats, dtype)
  return carry, ys


def _scan_reference(w, carry, x_gates, feats, att_feats, dtype):
  """attend_step scanned over x_gates [T, B, 4H]; JAX's autodiff of this is what attend_scan's VJP equals."""
  def body(carry, xg):
    return attend_step(w, carry, xg, feats, att_feats, dtype)
  return jax.lax.scan(body, carry, x_gates)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attend_scan(w, carry, x_gates, feats, att_feats, dtype: Any = f32):
  """attend_step over x_gates [T, B, 4H] (time-major) -> (final carry, (outs [T, B, H + C], alphas [T, B, N]))."""
  return _scan_reference(w, carry, x_gates, feats, att_feats, dtype)


def _fwd(w, carry, x_gates, feats, att_feats, dtype):
  def body(carry, xg):
    carry, ys, res = _step(w, carry, xg, feats, att_feats, dtype)
    return carry, (ys, res)

  carry_out, (ys, res) = jax.lax.scan(body, carry, x_gates)
  return (carry_out, ys), (w, feats, att_feats, res)


def _rows_t_matmul(x, y, dtype):
  """x [T, B, K], y [T, B, M] -> x^T y [K, M] over all T*B rows. On CPU and TPU one 2-D matmul of the rows
  (faster on XLA:CPU than the two-axis einsum). On GPUs the einsum over (T, B): with the batch sharded, XLA:GPU's
  partitioner all-gathers the merged [T*B] rows of every device (289 MB a step at batch 1,024 on 8 H100s,
  python -m jaxcap.aot), where the einsum leaves each device its partial sum for the gradient all-reduce."""
  x, y = x.astype(dtype), y.astype(dtype)

  def rows(x, y):
    return jnp.matmul(x.reshape(-1, x.shape[-1]).T, y.reshape(-1, y.shape[-1]), preferred_element_type=f32)

  def einsum(x, y):
    return jnp.einsum("tbk,tbm->km", x, y, preferred_element_type=f32)

  return jax.lax.platform_dependent(x, y, cpu=rows, tpu=rows, default=einsum)


def _bwd(dtype, saved, cts):
  w, feats, att_feats, res = saved
  (dc_last, dh_last), (d_outs, d_alphas) = cts
  hidden = dc_last.shape[-1]
  n_a = att_feats.shape[-1]
  lstm_k, hq_k = w["lstm_k"].astype(dtype), w["hq_k"].astype(dtype)
  score_k = w["score_k"][:, 0].astype(f32)

  def body(acc, step):
    dc, dh, d_att, d_feats, d_score_k, d_score_b = acc
    d_out, d_alpha_out, (zh, c_prev, gates, c, hq, alpha, ctx0) = step
    n_ctx = ctx0.shape[-1]
    # LSTM
    gi, gf, gg, go = jnp.split(gates, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(gi), jax.nn.sigmoid(gf), jnp.tanh(gg), jax.nn.sigmoid(go)
    tc = jnp.tanh(c)
    dh = dh + d_out[:, :hidden].astype(f32)
    dc = dc + dh * o * (1.0 - tc * tc)
    dgates = jnp.concatenate([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g),
                              dh * tc * o * (1.0 - o)], axis=-1)
    dc_prev = dc * f
    dzh = (dgates.astype(dtype) @ lstm_k.T).astype(f32)
    dctx = dzh[:, :n_ctx] + d_out[:, hidden:].astype(f32)
    dh_prev = dzh[:, n_ctx:]
    # Context gate and attention
    gate = jax.nn.sigmoid(hq[:, n_a:].astype(f32))
    dctx0 = dctx * gate
    dbeta = dctx * ctx0.astype(f32) * gate * (1.0 - gate)
    d_feats = d_feats + jnp.einsum("bn,bc->bnc", alpha, dctx0).astype(d_feats.dtype)
    dalpha = d_alpha_out.astype(f32) + jnp.einsum("bnc,bc->bn", feats.astype(f32), dctx0)
    ds = alpha * (dalpha - jnp.sum(alpha * dalpha, axis=-1, keepdims=True))
    energy = jnp.tanh(att_feats + hq[:, None, :n_a].astype(att_feats.dtype)).astype(f32)   # recomputed
    d_score_k = d_score_k + jnp.sum(energy * ds[..., None], axis=(0, 1))           # fuses with the tanh
    d_score_b = d_score_b + jnp.sum(ds)
    dpre = ds[..., None] * score_k * (1.0 - energy * energy)                       # [B, N, A]
    d_att = d_att + dpre.astype(d_att.dtype)
    dhq = jnp.concatenate([jnp.sum(dpre, axis=1), dbeta], axis=-1)
    dh_prev = dh_prev + (dhq.astype(dtype) @ hq_k.T).astype(f32)
    return (dc_prev, dh_prev, d_att, d_feats, d_score_k, d_score_b), (dgates, dhq)

  acc0 = (dc_last.astype(f32), dh_last.astype(f32), jnp.zeros(att_feats.shape, f32), jnp.zeros(feats.shape, f32),
          jnp.zeros((n_a,), f32), jnp.zeros((), f32))
  (dc0, dh0, d_att, d_feats, d_score_k, d_score_b), (dgates, dhq) = jax.lax.scan(
      body, acc0, (d_outs, d_alphas, res), reverse=True)
  zh, h_prev = res[0], res[0][..., -hidden:]
  # Weight gradients over all T*B rows at once (XLA's scan transpose would accumulate them step by step).
  dw = {"lstm_k": _rows_t_matmul(zh, dgates, dtype), "hq_k": _rows_t_matmul(h_prev, dhq, dtype),
        "hq_b": jnp.sum(dhq, axis=(0, 1)), "score_k": d_score_k[:, None], "score_b": d_score_b[None]}
  dw = {k: dw[k].astype(w[k].dtype) for k in w}
  return (dw, (dc0, dh0), dgates.astype(dtype), d_feats.astype(feats.dtype), d_att.astype(att_feats.dtype))


attend_scan.defvjp(_fwd, _bwd)
