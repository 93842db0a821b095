"""Captioning metrics. BLEU-1..4: nltk `corpus_bleu` over all references, on tokens normalized exactly as the
vocabulary normalizes them (lowercase, no punctuation, a-z words only)."""
from __future__ import annotations

import warnings
from typing import Sequence

from nltk.translate.bleu_score import corpus_bleu

from jaxcap.data.vocab import normalize

BLEU_WEIGHTS = ((1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25))


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
  """Corpus BLEU-1..4 of hypotheses[i] against all of references[i] (raw or normalized text)."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
  hyps = [normalize(h) for h in hypotheses]
  refs = [[normalize(r) for r in rs] for rs in references]
  with warnings.catch_warnings():  # nltk warns when an n-gram order has no match; the score (0) is right
    warnings.simplefilter("ignore", UserWarning)
    scores = corpus_bleu(refs, hyps, weights=BLEU_WEIGHTS)
  return {f"bleu{n + 1}": float(s) for n, s in enumerate(scores)}
