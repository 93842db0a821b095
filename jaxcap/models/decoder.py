"""LSTM caption decoder: Show-and-Tell (`show_tell`) or Show-Attend-Tell soft attention (`attend`).

Shapes: grid [B, h, w, C] (encoder features), tokens [B, T] int32, logits [B, T, V], alphas [B, T, h*w].

What is hoisted out of the time loop (same math as per-step, fewer and larger matmuls):
- the attention projection of the image grid, once per image;
- the embedding's contribution to the LSTM gates, for all T steps in one matmul;
- the output projection to the vocabulary (from [h; context] in attend mode), for all T steps after the scan.
In attend mode the training path scans `attend_lstm.attend_scan`, whose hand-written backward also keeps the
weight gradients out of the loop; `step` (greedy and beam search) runs `attend_lstm.attend_step` on the same
`cell` weights, so the two share parameters by construction (`tests/test_decoder.py` checks both). With
`beams = K`, `step` takes K rows per image against one copy of each image's constants (beam search keeps no
K copies of the grid): attend_step mapped over the beam axis.

The vocabulary projection accumulates in and returns float32 whatever `dtype` (its inputs and kernel are cast to
`dtype`): log-probabilities (the loss, beam ranking, self-critical log-probs) are not rounded to bfloat16.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxcap.models import attend_lstm

MODES = ("show_tell", "attend")
BACKWARDS = ("manual", "autodiff")



class _Kernel(nn.Module):
  """The parameters of an nn.Dense (same names, shapes and initializers), handed out instead of applied."""
  use_bias: bool = True

  @nn.compact
  def __call__(self, in_features: int, features: int):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, features))
    bias = self.param("bias", nn.initializers.zeros_init(), (features,)) if self.use_bias else None
    return kernel, bias


class AttendCell(nn.Module):
  """Soft attention then the LSTM (`attend_lstm.attend_step`); `weights` feeds the scanned training path."""
  hidden_dim: int
  attention_dim: int
  dtype: Any = jnp.float32

  def setup(self):
    self.h_proj = _Kernel()          # the query and the context gate both read h: one matmul for both
    self.att_score = _Kernel()
    self.lstm = _Kernel(use_bias=False)

  def weights(self, n_feat: int) -> dict:
    hq_k, hq_b = self.h_proj(self.hidden_dim, self.attention_dim + n_feat)
    score_k, score_b = self.att_score(self.attention_dim, 1)
    lstm_k, _ = self.lstm(n_feat + self.hidden_dim, 4 * self.hidden_dim)
    return {"hq_k": hq_k, "hq_b": hq_b, "score_k": score_k, "score_b": score_b, "lstm_k": lstm_k}

  def __call__(self, carry, x_gates, feats, att_feats, beams: int = 1):
    # x_gates [B*K, 4H] (embedding part of the gates), carry [B*K, H] (K = beams rows per image, consecutive),
    # feats [B, N, C], att_feats [B, N, A] (hoisted projection): one copy per image, whatever K.
    w = self.weights(feats.shape[-1])
    step = functools.partial(attend_lstm.attend_step, dtype=self.dtype)
    if beams == 1:
      return step(w, carry, x_gates, feats, att_feats)
    split = lambda x: x.reshape((feats.shape[0], beams) + x.shape[1:])  # noqa: E731
    carry, ys = jax.vmap(step, in_axes=(None, 1, 1, None, None), out_axes=1)(
        w, jax.tree.map(split, carry), split(x_gates), feats, att_feats)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), (carry, ys))


class ShowTellCell(nn.Module):
  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x_gates, feats, att_feats, beams: int = 1):
    del feats, att_feats, beams  # rows are independent: K beams per image are just more rows
    c, h = carry
    gates = x_gates + nn.Dense(4 * self.hidden_dim, use_bias=False, dtype=self.dtype, name="lstm")(h)
    c, h = attend_lstm.lstm_update(gates, c)
    return (c, h), (h, jnp.zeros(h.shape[:1] + (0,), jnp.float32))


def repeat_rows(tree, n: int):
  """Every leaf's rows repeated n times (row i becomes rows i*n .. i*n+n-1)."""
  return tree if n == 1 else jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), tree)


class Decoder(nn.Module):
  vocab_size: int
  mode: str = "attend"
  embed_dim: int = 512
  hidden_dim: int = 512
  attention_dim: int = 512
  dropout: float = 0.5          # on the LSTM output (and context) before the vocabulary projection
  embed_dropout: float = 0.0    # on the word embeddings
  # Xu et al.'s deep output: logits = L_o(tanh(L_hz [h; z] + E y_prev)), an embed_dim-wide layer before the
  # vocabulary projection (3.5x less output work than projecting [h; z] directly).
  deep_output: bool = False
  # Attend mode's training recurrence: "manual" (attend_lstm.attend_scan, hand-written backward) or "autodiff"
  # (nn.scan over the cell, differentiated by JAX). The same function and parameters; only speed differs.
  attention_backward: str = "manual"
  dtype: Any = jnp.float32

  def setup(self):
    if self.mode not in MODES:
      raise ValueError(f"decoder mode must be one of {MODES}, got {self.mode!r}")
    if self.attention_backward not in BACKWARDS:
      raise ValueError(f"attention_backward must be one of {BACKWARDS}, got {self.attention_backward!r}")
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, name="embed")
    self.embed_gates = nn.Dense(4 * self.hidden_dim, dtype=self.dtype, name="embed_gates")
    self.init_c = nn.Dense(self.hidden_dim, dtype=self.dtype, name="init_c")
    self.init_h = nn.Dense(self.hidden_dim, dtype=self.dtype, name="init_h")
    if self.mode == "attend":
      self.att_proj = nn.Dense(self.attention_dim, dtype=self.dtype, name="att_proj")
      self.cell = AttendCell(self.hidden_dim, self.attention_dim, self.dtype, name="cell")
    else:
      self.cell = ShowTellCell(self.hidden_dim, self.dtype, name="cell")
    if self.deep_output:
      self.deep = nn.Dense(self.embed_dim, dtype=self.dtype, name="deep")
    self.out = _Kernel(name="out")   # an nn.Dense's parameters; applied by _logits

  def init_state(self, grid):
    """Per-image constants and the initial carry. grid [B, h, w, C] -> (feats, att_feats, (c, h))."""
    feats = grid.reshape(grid.shape[0], -1, grid.shape[-1]).astype(self.dtype)      # [B, N, C]
    # Converted once on CPU: XLA:CPU would otherwise repeat the cast (slow for float16 cached features) inside
    # every fusion that reads the features. Elsewhere the barrier would only stop XLA fusing the cast into its
    # consumers. Chosen when lowering, not tracing: a CPU host also lowers this program for TPU.
    feats = jax.lax.platform_dependent(feats, cpu=jax.lax.optimization_barrier, default=lambda x: x)
    pooled = jnp.mean(feats.astype(jnp.float32), axis=1).astype(self.dtype)
    carry = (jnp.tanh(self.init_c(pooled).astype(jnp.float32)),
             jnp.tanh(self.init_h(pooled).astype(jnp.float32)))
    att_feats = self.att_proj(feats) if self.mode == "attend" else jnp.zeros(feats.shape[:2] + (0,), self.dtype)
    return feats, att_feats, carry

  def __call__(self, grid, tokens, train: bool = False, captions_per_image: int = 1):
    """Teacher-forced logits [B, T, V] and attention weights [B, T, N] for input tokens [B, T]; with
    captions_per_image = k, grid holds B / k images, each image's k captions consecutive in tokens (the image's
    constants computed once, not k times)."""
    feats, att_feats, carry = repeat_rows(self.init_state(grid), captions_per_image)
    emb = self.embed(tokens)
    x = self._dropout(emb, self.embed_dropout, train)
    x_gates = self.embed_gates(x.astype(self.dtype))                                # [B, T, 4H]

    if self.mode == "attend" and self.attention_backward == "manual":
      # Time-major for lax.scan; the hand-written backward (attend_lstm) keeps weight gradients out of the loop.
      _, (outs, alphas) = attend_lstm.attend_scan(self.cell.weights(feats.shape[-1]), carry,
                                                  jnp.swapaxes(x_gates, 0, 1), feats, att_feats, self.dtype)
      outs, alphas = jnp.swapaxes(outs, 0, 1), jnp.swapaxes(alphas, 0, 1)
    else:
      def body(cell, carry, x_t, feats, att_feats):
        return cell(carry, x_t, feats, att_feats)

      scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False},
                     in_axes=(1, nn.broadcast, nn.broadcast), out_axes=1)
      _, (outs, alphas) = scan(self.cell, carry, x_gates, feats, att_feats)
    outs = self._pre_logits(outs, emb)
    return self._logits(self._dropout(outs, self.dropout, train)), alphas

  def _dropout(self, x, rate: float, train: bool):
    """Dropout on x [B, T, D] whose mask at time t depends only on (the dropout key, t), not on T: a batch padded
    to a longer length (several steps per dispatch pad to their longest) keeps the masks of its real tokens."""
    if not train or rate == 0.0:
      return x
    key = self.make_rng("dropout")
    keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(x.shape[1]))
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, x.shape[:1] + x.shape[2:]), out_axes=1)(keys)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)

  def step(self, state, tokens, beams: int = 1):
    """One decoding step. state = (feats, att_feats, carry); tokens [B] -> (logits [B, V], alpha [B, N], state).
    With beams = K: feats and att_feats hold B images, carry and tokens B*K rows (image i's K rows consecutive),
    and logits and alpha are per row."""
    feats, att_feats, carry = state
    emb = self.embed(tokens)
    x_gates = self.embed_gates(emb.astype(self.dtype))
    carry, (out, alpha) = self.cell(carry, x_gates, feats, att_feats, beams)
    out = self._pre_logits(out, emb)
    return self._logits(out), alpha, (feats, att_feats, carry)

  def _logits(self, x):
    """The vocabulary projection of x [..., D]: `dtype` inputs and kernel, float32 accumulation, result and bias
    (for float32 the same operations as nn.Dense)."""
    kernel, bias = self.out(x.shape[-1], self.vocab_size)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (((x.ndim - 1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32)
    return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))

  def _pre_logits(self, outs, emb):
    if not self.deep_output:
      return outs
    return jnp.tanh((self.deep(outs.astype(self.dtype)) + emb.astype(self.dtype)).astype(jnp.float32))
