"""LSTM caption decoder: Show-and-Tell (`show_tell`) or Show-Attend-Tell soft attention (`attend`).

Shapes: grid [B, h, w, C] (encoder features), tokens [B, T] int32, logits [B, T, V], alphas [B, T, h*w].

What is hoisted out of the time loop (same math as per-step, fewer and larger matmuls):
- the attention projection of the image grid, once per image (peers redo it at every step);
- the embedding's contribution to the LSTM gates, for all T steps in one matmul;
- the output projection to the vocabulary (from [h; context] in attend mode), for all T steps after the scan.
The scanned training path and `step` (used by greedy and beam search) call the same `cell` module, so they
share parameters by construction.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

MODES = ("show_tell", "attend")



def _lstm(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  i, f, g, o = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return c, jax.nn.sigmoid(o) * jnp.tanh(c)


class AttendCell(nn.Module):
  """One step of soft attention (Xu et al. 2015, with the gating scalar beta) followed by the LSTM."""
  hidden_dim: int
  attention_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x_gates, feats, att_feats):
    # x_gates [B, 4H] (embedding part of the gates), feats [B, N, C], att_feats [B, N, A] (hoisted projection)
    c, h = carry
    n_feat = feats.shape[-1]
    # The query and the gate both read h: one matmul for both.
    hq = nn.Dense(self.attention_dim + n_feat, dtype=self.dtype, name="h_proj")(h)
    query, beta = hq[:, :self.attention_dim], hq[:, self.attention_dim:]
    energy = jnp.tanh(att_feats + query[:, None, :].astype(att_feats.dtype))
    scores = nn.Dense(1, dtype=self.dtype, name="att_score")(energy)[..., 0]
    alpha = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)                 # [B, N]
    context = jnp.einsum("bn,bnc->bc", alpha.astype(feats.dtype), feats)
    context = context * jax.nn.sigmoid(beta.astype(jnp.float32)).astype(context.dtype)
    zh = jnp.concatenate([context.astype(self.dtype), h.astype(self.dtype)], axis=-1)
    gates = x_gates + nn.Dense(4 * self.hidden_dim, use_bias=False, dtype=self.dtype, name="lstm")(zh)
    c, h = _lstm(gates, c)
    # The output layer reads the context as well as h (Xu et al.'s deep output uses z too).
    return (c, h), (jnp.concatenate([h.astype(self.dtype), context.astype(self.dtype)], -1), alpha)


class ShowTellCell(nn.Module):
  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, x_gates, feats, att_feats):
    c, h = carry
    gates = x_gates + nn.Dense(4 * self.hidden_dim, use_bias=False, dtype=self.dtype, name="lstm")(h)
    c, h = _lstm(gates, c)
    return (c, h), (h, jnp.zeros(h.shape[:1] + (0,), jnp.float32))


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
  dtype: Any = jnp.float32

  def setup(self):
    if self.mode not in MODES:
      raise ValueError(f"decoder mode must be one of {MODES}, got {self.mode!r}")
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
    self.out = nn.Dense(self.vocab_size, dtype=self.dtype, name="out")
    self.drop = nn.Dropout(self.dropout)
    self.embed_drop = nn.Dropout(self.embed_dropout)

  def init_state(self, grid):
    """Per-image constants and the initial carry. grid [B, h, w, C] -> (feats, att_feats, (c, h))."""
    feats = grid.reshape(grid.shape[0], -1, grid.shape[-1]).astype(self.dtype)      # [B, N, C]
    pooled = jnp.mean(feats.astype(jnp.float32), axis=1).astype(self.dtype)
    carry = (jnp.tanh(self.init_c(pooled).astype(jnp.float32)),
             jnp.tanh(self.init_h(pooled).astype(jnp.float32)))
    att_feats = self.att_proj(feats) if self.mode == "attend" else jnp.zeros(feats.shape[:2] + (0,), self.dtype)
    return feats, att_feats, carry

  def __call__(self, grid, tokens, train: bool = False):
    """Teacher-forced logits [B, T, V] and attention weights [B, T, N] for input tokens [B, T]."""
    feats, att_feats, carry = self.init_state(grid)
    emb = self.embed(tokens)
    x = self.embed_drop(emb, deterministic=not train)
    x_gates = self.embed_gates(x.astype(self.dtype))                                # [B, T, 4H]

    def body(cell, carry, x_t, feats, att_feats):
      return cell(carry, x_t, feats, att_feats)

    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=(1, nn.broadcast, nn.broadcast), out_axes=1)
    _, (outs, alphas) = scan(self.cell, carry, x_gates, feats, att_feats)
    outs = self._pre_logits(outs, emb)
    logits = self.out(self.drop(outs, deterministic=not train).astype(self.dtype))
    return logits.astype(jnp.float32), alphas

  def step(self, state, tokens):
    """One decoding step. state = (feats, att_feats, carry); tokens [B] -> (logits [B, V], alpha, state)."""
    feats, att_feats, carry = state
    emb = self.embed(tokens)
    x_gates = self.embed_gates(emb.astype(self.dtype))
    carry, (out, alpha) = self.cell(carry, x_gates, feats, att_feats)
    out = self._pre_logits(out, emb)
    return self.out(out.astype(self.dtype)).astype(jnp.float32), alpha, (feats, att_feats, carry)

  def _pre_logits(self, outs, emb):
    if not self.deep_output:
      return outs
    return jnp.tanh((self.deep(outs.astype(self.dtype)) + emb.astype(self.dtype)).astype(jnp.float32))
