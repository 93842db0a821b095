"""Caption decoding, jit-compiled and batched over images: greedy (beam search joins it later).

Decoders are addressed through `Decoder.init_state` / `Decoder.step`, so this module knows nothing of files or
checkpoints.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcap.data import vocab as vocab_lib
from jaxcap.models.decoder import Decoder


@functools.partial(jax.jit, static_argnames=("decoder", "max_len"))
def greedy(decoder: Decoder, params, grid: jax.Array, max_len: int = 20):
  """Greedy captions for grid [B, h, w, C]: tokens [B, max_len] (<pad> after <end>), alphas [B, max_len, N].

  Stops early (lax.while_loop) once every caption has emitted <end>.
  """
  variables = {"params": params}
  state = decoder.apply(variables, grid, method=Decoder.init_state)
  b = grid.shape[0]
  n = state[1].shape[1] if decoder.mode == "attend" else 0
  tokens = jnp.full((b, max_len), vocab_lib.PAD_ID, jnp.int32)
  alphas = jnp.zeros((b, max_len, n), jnp.float32)

  def cond(c):
    t, _, _, done, _, _ = c
    return (t < max_len) & ~jnp.all(done)

  def body(c):
    t, state, prev, done, tokens, alphas = c
    logits, alpha, state = decoder.apply(variables, state, prev, method=Decoder.step)
    nxt = jnp.where(done, vocab_lib.PAD_ID, jnp.argmax(logits, -1).astype(jnp.int32))
    tokens = tokens.at[:, t].set(nxt)
    alphas = alphas.at[:, t].set(alpha)
    return t + 1, state, nxt, done | (nxt == vocab_lib.END_ID), tokens, alphas

  start = jnp.full((b,), vocab_lib.START_ID, jnp.int32)
  init = (jnp.int32(0), state, start, jnp.zeros((b,), bool), tokens, alphas)
  _, _, _, _, tokens, alphas = jax.lax.while_loop(cond, body, init)
  return tokens, alphas
