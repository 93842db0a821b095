"""The one evaluator: decoder parameters + a split's inputs (feature grids, references) -> captions + metrics.

Training validation, the final test evaluation, `jaxcap.evaluate`, the `Captioner` (and through it
`jaxcap.caption` and the app) all decode through `decode_grids`, so the figure training prints and the one
`jaxcap.evaluate` reports come from the same code. Grids go in fixed-size batches (the last one padded with
zero rows, which are cut again): one compilation per batch size. Given a mesh, greedy decoding runs on all its
devices, each process decoding its share of the images (`greedy_on_mesh`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcap import decode, metrics
from jaxcap.grids import SplitInputs, map_grids, rows
from jaxcap.data import batching
from jaxcap.data.vocab import Vocab


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to decode: beam_size 1 is greedy; alpha is the GNMT length penalty of beam search; rerank_k and
  rerank_weight override a consensus index's own (`jaxcap.consensus`; weight 0: no reranking); `attention`:
  whether beam search returns the attention maps (the app shows them; metrics never read them)."""
  beam_size: int = 1
  max_len: int = 20
  alpha: float = 0.0
  batch_size: int = 64
  rerank_k: int | None = None
  rerank_weight: float | None = None
  attention: bool = False           # beam search keeps every token's attention map (Decoded.alphas; else empty)


@dataclasses.dataclass
class Decoded:
  """K captions per image, best first (K = 1 for greedy)."""
  tokens: np.ndarray                 # [N, K, max_len] int32, <pad> after <end>
  scores: np.ndarray                 # [N, K] ranking score (log-probability / length penalty; 0 for greedy)
  log_probs: np.ndarray              # [N, K] (0 for greedy)
  alphas: np.ndarray                 # [N, K, max_len, h*w] attention of every token (attend mode)


def decode_grids(decoder, params, grids, settings: Settings, rerank: Callable | None = None,
                 mesh: Mesh | None = None) -> Decoded:
  """Greedy or beam-search captions for grids [N, h, w, C], in batches of settings.batch_size. `decoder` and
  `params` may be tuples: an ensemble (`jaxcap.decode`), and then `grids` too: one per member. `rerank`
  (`jaxcap.consensus.Reranker`) re-orders each image's beams: (first member's grids, tokens, scores, settings)
  -> (order, new scores), or None to keep them. `mesh`: greedy decoding over its devices (`greedy_on_mesh`)."""
  if mesh is not None and settings.beam_size <= 1:
    return greedy_on_mesh(decoder, params, grids, settings, mesh)
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
          decoder, params, g, settings.beam_size, settings.max_len, settings.alpha,
          with_alphas=settings.attention))
      reranked = rerank and rerank(decode.member_grids(decoders, g)[0], tokens, scores, settings)
      if reranked:
        order, scores = reranked
        tokens, log_probs, alphas = (np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), 1)
                                     for a in (tokens, log_probs, alphas))
    parts.append((tokens, scores, log_probs, alphas))
  return Decoded(*(np.concatenate(p) for p in zip(*parts)))


@functools.lru_cache(maxsize=16)
def greedy_per_device(decoder, max_len: int, mesh: Mesh):
  """greedy(params, grids) over `mesh`: the parameters replicated, the grids' rows split over `data`, and each
  device decoding its rows alone (its own early stop; no step waits on another device). Unchecked replication
  (check_vma): greedy's loop starts from constants that only its body makes per-device."""
  return jax.jit(jax.shard_map(lambda p, g: decode.greedy(decoder, p, g, max_len), mesh=mesh,
                               in_specs=(P(), P("data")), out_specs=P("data"), check_vma=False))


def greedy_on_mesh(decoder, params, grids, settings: Settings, mesh: Mesh) -> Decoded:
  """`decode_grids`' greedy captions, decoded on every device of `mesh`: the parameters placed on it once
  (replicated; nothing moves if they are there already), each batch of settings.batch_size rows (rounded up to a
  multiple of the devices) split over the `data` axis. In a multi-process run each process reads and decodes a
  contiguous share of the images, and every process gets every image's caption back."""
  n_proc, me = jax.process_count(), jax.process_index()
  total, devices = rows(grids), mesh.devices.size
  mine = sum(d.process_index == me for d in mesh.devices.flat)
  per_call = -(-settings.batch_size // devices) * mine  # this process's rows of each (padded) batch
  share = -(-total // n_proc)
  start, stop = min(me * share, total), min((me + 1) * share, total)
  params = jax.device_put(params, NamedSharding(mesh, P()))
  split = NamedSharding(mesh, P("data"))
  greedy = greedy_per_device(decoder, settings.max_len, mesh)
  tokens, alphas = [], []
  for i in range(start, start + max(share, 1), per_call):  # the same number of calls in every process
    n = max(min(per_call, stop - i), 0)
    g = map_grids(lambda x: jax.make_array_from_process_local_data(  # noqa: B023
        split, batching.pad_rows(np.asarray(x[i:i + n]), per_call)), grids)
    out = multihost_utils.global_array_to_host_local_array(greedy(params, g), mesh, P("data"))
    tokens.append(np.asarray(out[0])[:n])
    alphas.append(np.asarray(out[1])[:n])
  tokens, alphas = np.concatenate(tokens)[:, None], np.concatenate(alphas)[:, None]
  if n_proc > 1:
    counts = [min((p + 1) * share, total) - min(p * share, total) for p in range(n_proc)]
    gathered = multihost_utils.process_allgather([batching.pad_rows(a, share) for a in (tokens, alphas)])
    tokens, alphas = (np.concatenate([a[p][:c] for p, c in enumerate(counts)]) for a in gathered)
  zeros = np.zeros(tokens.shape[:2], np.float32)
  return Decoded(tokens, zeros, zeros, alphas)


@dataclasses.dataclass
class Evaluation:
  captions: list[str]                # the best caption of each image
  beams: list[list[tuple[str, float]]]  # every beam's (caption, score), best first
  metrics: dict                      # what `scorer` returned


def evaluate(decoder, params, inputs: SplitInputs, settings: Settings, vocab: Vocab,
             scorer: Callable[[Sequence[str], Sequence[Sequence[str]]], dict] = metrics.bleu,
             rerank: Callable | None = None, mesh: Mesh | None = None) -> Evaluation:
  """Decodes every grid of `inputs` (beams re-ranked by `rerank`; greedy over `mesh`'s devices: see
  `decode_grids`) and scores the best captions against the references."""
  out = decode_grids(decoder, params, inputs.grids, settings, rerank, mesh)
  beams = [[(vocab.to_text(t), float(s)) for t, s in zip(toks, scores)]
           for toks, scores in zip(out.tokens, out.scores)]
  captions = [b[0][0] for b in beams]
  return Evaluation(captions, beams, scorer(captions, inputs.references))
