"""CIDEr-D as a fast, batched score (a self-critical training reward): document frequencies fixed once from a
reference corpus (e.g. the train captions), n-grams counted with vectorized numpy over a whole batch.

Written by hand because pycocoevalcap's `Cider` scores one caption at a time in Python dictionaries and
recomputes the document frequencies from the captions it is given on every call; a reward needs thousands of
captions a step against fixed train statistics. The math is coco-caption's CIDEr-D exactly (n = 1..4, tf-idf
vectors, clipped cosine similarity, Gaussian length penalty sigma = 6 on the bigram count, x10):
`tests/test_cider.py` checks it equals pycocoevalcap within 1e-6.

    scorer = CiderD(train_references)              # list (per image) of lists of captions
    scores = scorer.score(hypotheses, references)  # hypotheses[i] against references[i] -> [N] float64
    scores = scorer.score(hypotheses, refs_per_image, ref_index=image_of_each_hypothesis)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_BITS = 16          # bits per word id in a packed n-gram key: ids < 2**16, four words fill 64 bits
_MAX_N = 4


class CiderD:
  def __init__(self, corpus: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0):
    if not 1 <= n <= _MAX_N:
      raise ValueError(f"n must be 1..{_MAX_N}, got {n}")
    self.n, self.sigma = n, sigma
    self._ids: dict[str, int] = {}
    # Document frequency: in how many images' reference sets an n-gram occurs.
    sents = [s for refs in corpus for s in refs]
    owner = np.repeat(np.arange(len(corpus)), [len(r) for r in corpus])
    sent, keys, _ = self._ngrams(sents)
    image_keys = np.unique(np.stack([owner[sent].astype(np.uint64), keys]), axis=1)
    self._df_keys, self._df = np.unique(image_keys[1], return_counts=True)
    self.ref_len = np.log(float(len(corpus)))

  def _word_ids(self, words: list[str]) -> list[int]:
    ids = self._ids
    for w in words:
      if w not in ids:
        if len(ids) + 1 >= 2 ** _BITS:
          raise ValueError(f"more than {2 ** _BITS - 2} distinct words")
        ids[w] = len(ids) + 1  # 0 pads
    return [ids[w] for w in words]

  def _ngrams(self, sentences: Sequence[str]):
    """(sentence index, packed n-gram key, order 0..n-1) of every n-gram occurrence, and bigram counts."""
    toks = [self._word_ids(s.split()) for s in sentences]
    lens = np.array([len(t) for t in toks], np.int64)
    width = max(int(lens.max(initial=0)), 1) + self.n
    ids = np.zeros((len(toks), width), np.uint64)
    for i, t in enumerate(toks):
      ids[i, :len(t)] = t
    sent, keys, order = [], [], []
    key = np.zeros((len(toks), width), np.uint64)
    pos = np.arange(width)[None, :]
    for k in range(self.n):  # key of the (k+1)-gram starting at each position
      key = key | (np.roll(ids, -k, axis=1) << np.uint64(_BITS * k))
      valid = pos + k < lens[:, None]
      s, p = np.nonzero(valid)
      sent.append(s)
      keys.append(key[s, p])
      order.append(np.full(len(s), k, np.int64))
    return np.concatenate(sent), np.concatenate(keys), np.concatenate(order)

  def _vectors(self, sentences: Sequence[str]):
    """Distinct (sentence, key) entries with their tf-idf weight and order; norms [S, n]; bigram counts [S]."""
    sent, keys, order = self._ngrams(sentences)
    pairs, first, counts = np.unique(np.stack([sent.astype(np.uint64), keys]), axis=1, return_index=True,
                                     return_counts=True)
    s, key, k = pairs[0].astype(np.int64), pairs[1], order[first]
    pos = np.searchsorted(self._df_keys, key)
    pos_c = np.minimum(pos, len(self._df_keys) - 1)
    df = np.where((pos < len(self._df_keys)) & (self._df_keys[pos_c] == key), self._df[pos_c], 0)
    weight = counts * (self.ref_len - np.log(np.maximum(1.0, df)))
    norms = np.sqrt(np.bincount(s * self.n + k, weight ** 2, minlength=len(sentences) * self.n))
    bigrams = np.bincount(s, (k == 1) * counts, minlength=len(sentences))
    return s, key, k, weight, norms.reshape(-1, self.n), bigrams

  def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]],
            ref_index: Sequence[int] | None = None) -> np.ndarray:
    """CIDEr-D of hypotheses[i] against references[ref_index[i]] (default: references[i]); words are the
    whitespace-separated tokens of already normalized text."""
    ref_index = np.arange(len(hypotheses)) if ref_index is None else np.asarray(ref_index)
    used, ref_index = np.unique(ref_index, return_inverse=True)  # only the references some hypothesis uses
    references = [references[i] for i in used]
    n_refs = np.array([len(r) for r in references])
    if (n_refs[ref_index] == 0).any():
      raise ValueError("every hypothesis needs at least one reference")
    flat = [s for refs in references for s in refs]
    ref_start = np.concatenate([[0], np.cumsum(n_refs)[:-1]])
    hs, hkey, hk, hw, hnorm, hlen = self._vectors(hypotheses)
    rs, rkey, _, rw, rnorm, rlen = self._vectors(flat)
    # Compact ids of every key in the batch, so (reference sentence, key) fits one sortable int64.
    uniq, inv = np.unique(np.concatenate([hkey, rkey]), return_inverse=True)
    hc, rc = inv[:len(hkey)], inv[len(hkey):]
    ref_code = rs * len(uniq) + rc
    sort = np.argsort(ref_code)
    ref_code, rw_sorted = ref_code[sort], rw[sort]
    n_hyp, max_refs = len(hypotheses), int(n_refs.max())
    val = np.zeros((n_hyp, max_refs, self.n))
    for j in range(max_refs):  # the j-th reference of each hypothesis's image
      has = j < n_refs[ref_index[hs]]
      r = ref_start[ref_index[hs]] + j
      target = r * len(uniq) + hc
      pos = np.minimum(np.searchsorted(ref_code, target), len(ref_code) - 1)
      w_ref = np.where(has & (ref_code[pos] == target), rw_sorted[pos], 0.0)
      np.add.at(val, (hs, j, hk), np.minimum(hw, w_ref) * w_ref)
    j = np.arange(max_refs)
    has = j[None, :] < n_refs[ref_index][:, None]                                  # [H, R]
    r = np.where(has, ref_start[ref_index][:, None] + j[None, :], 0)
    denom = hnorm[:, None, :] * rnorm[r]                                          # [H, R, n]
    val = np.where(denom != 0, val / np.where(denom != 0, denom, 1.0), val)
    delta = (hlen[:, None] - rlen[r]).astype(np.float64)
    val *= np.exp(-(delta ** 2) / (2 * self.sigma ** 2))[..., None]
    val *= has[..., None]
    return val.mean(-1).sum(-1) / n_refs[ref_index] * 10.0
