"""The one evaluator: decoder parameters + a split's inputs (feature grids, references) -> captions + metrics.

Training validation, the final test evaluation, `jaxcap.evaluate`, the `Captioner` (and through it
`jaxcap.caption` and the app) all decode through `decode_grids`, so the figure training prints and the one
`jaxcap.evaluate` reports come from the same code. Grids go in fixed-size batches (the last one padded with
zero rows, which are cut again): one compilation per batch size.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from jaxcap import decode, metrics
from jaxcap.grids import SplitInputs, map_grids, rows
from jaxcap.data import batching
from jaxcap.data.vocab import Vocab


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to decode: beam_size 1 is greedy; alpha is the GNMT length penalty of beam search; rerank_k and
  rerank_weight override a consensus index's own (`jaxcap.consensus`; weight 0: no reranking)."""
  beam_size: int = 1
  max_len: int = 20
  alpha: float = 0.0
  batch_size: int = 64
  rerank_k: int | None = None
  rerank_weight: float | None = None


@dataclasses.dataclass
class Decoded:
  """K captions per image, best first (K = 1 for greedy)."""
  tokens: np.ndarray                 # [N, K, max_len] int32, <pad> after <end>
  scores: np.ndarray                 # [N, K] ranking score (log-probability / length penalty; 0 for greedy)
  log_probs: np.ndarray              # [N, K] (0 for greedy)
  alphas: np.ndarray                 # [N, K, max_len, h*w] attention of every token (attend mode)


def decode_grids(decoder, params, grids, settings: Settings, rerank: Callable | None = None) -> Decoded:
  """Greedy or beam-search captions for grids [N, h, w, C], in batches of settings.batch_size. `decoder` and
  `params` may be tuples: an ensemble (`jaxcap.decode`), and then `grids` too: one per member. `rerank`
  (`jaxcap.consensus.Reranker`) re-orders each image's beams: (first member's grids, tokens, scores, settings)
  -> (order, new scores), or None to keep them."""
  parts, total = [], rows(grids)
  decoders = decode.members(decoder, params)[0]
  for i in range(0, total, settings.batch_size):
    n = min(settings.batch_size, total - i)
    # grids may be on disk (feature_cache.FeatureRows)
    g = map_grids(lambda x: jnp.asarray(batching.pad_rows(np.asarray(x[i:i + n]), settings.batch_size)),  # noqa: B023
                  grids)
    if settings.beam_size <= 1:
      tokens, alphas = decode.greedy(decoder, params, g, settings.max_len)
      tokens, alphas = np.asarray(tokens)[:n, None], np.asarray(alphas)[:n, None]
      scores = log_probs = np.zeros(tokens.shape[:2], np.float32)
    else:
      tokens, scores, log_probs, alphas = (np.asarray(a)[:n] for a in decode.beam_search(
          decoder, params, g, settings.beam_size, settings.max_len, settings.alpha))
      reranked = rerank and rerank(decode.member_grids(decoders, g)[0], tokens, scores, settings)
      if reranked:
        order, scores = reranked
        tokens, log_probs, alphas = (np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), 1)
                                     for a in (tokens, log_probs, alphas))
    parts.append((tokens, scores, log_probs, alphas))
  return Decoded(*(np.concatenate(p) for p in zip(*parts)))


@dataclasses.dataclass
class Evaluation:
  captions: list[str]                # the best caption of each image
  beams: list[list[tuple[str, float]]]  # every beam's (caption, score), best first
  metrics: dict                      # what `scorer` returned


def evaluate(decoder, params, inputs: SplitInputs, settings: Settings, vocab: Vocab,
             scorer: Callable[[Sequence[str], Sequence[Sequence[str]]], dict] = metrics.bleu,
             rerank: Callable | None = None) -> Evaluation:
  """Decodes every grid of `inputs` (beams re-ranked by `rerank`, see `decode_grids`) and scores the best
  captions against the references."""
  out = decode_grids(decoder, params, inputs.grids, settings, rerank)
  beams = [[(vocab.to_text(t), float(s)) for t, s in zip(toks, scores)]
           for toks, scores in zip(out.tokens, out.scores)]
  captions = [b[0][0] for b in beams]
  return Evaluation(captions, beams, scorer(captions, inputs.references))
