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


def sentence_bleu4(hypothesis: str, references: Sequence[str]) -> float:
  """Per-image BLEU-4 (smoothed, since single sentences often miss some 4-gram), for ranking captions."""
  from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
  return float(sentence_bleu([normalize(r) for r in references], normalize(hypothesis),
                             smoothing_function=SmoothingFunction().method1))


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """Corpus CIDEr-D through pycocoevalcap, on normalized text (document frequencies from these references)."""
  from pycocoevalcap.cider.cider import Cider
  gts = {i: [" ".join(normalize(r)) for r in rs] for i, rs in enumerate(references)}
  res = {i: [" ".join(normalize(h)) or "<empty>"] for i, h in enumerate(hypotheses)}
  return float(Cider().compute_score(gts, res)[0])


def bleu_and_cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
  """What training validates with: BLEU-1..4 and CIDEr-D (both fast; METEOR needs a Java process)."""
  return {**bleu(hypotheses, references), "cider": cider(hypotheses, references)}


def java_available() -> bool:
  import shutil
  import subprocess
  if not shutil.which("java"):
    return False
  return subprocess.run(["java", "-version"], capture_output=True).returncode == 0


def coco_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                 meteor: bool = True) -> dict[str, float]:
  """CIDEr-D, ROUGE-L and METEOR 1.5 through pycocoevalcap (the captioning literature's implementations).

  Text goes in normalized (the PTB tokenizer is not needed: normalization already lowercases and strips
  punctuation). METEOR needs Java; without it the result has meteor=None and a `note`.
  """
  from pycocoevalcap.rouge.rouge import Rouge

  gts = {i: [" ".join(normalize(r)) for r in rs] for i, rs in enumerate(references)}
  res = {i: [" ".join(normalize(h)) or "<empty>"] for i, h in enumerate(hypotheses)}
  out = {"cider": cider(hypotheses, references), "rouge_l": float(Rouge().compute_score(gts, res)[0])}
  if meteor and java_available():
    from pycocoevalcap.meteor.meteor import Meteor
    out["meteor"] = float(Meteor().compute_score(gts, res)[0])  # the Java process ends with the object
  elif meteor:
    out["meteor"] = None
    out["note"] = "METEOR skipped: Java not found (install a JRE, e.g. apt-get install default-jre-headless)"
  else:
    out["meteor"] = None
  return out


def coco_bleu4(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float | None:
  """BLEU-4 as the coco-caption toolkit computes it, the figure papers print: raw text through its PTB
  tokenizer (Stanford CoreNLP, Java), then pycocoevalcap's `Bleu` (closest-reference length). None without
  Java."""
  if not java_available():
    return None
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  tok = PTBTokenizer()
  gts = tok.tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(references)})
  res = tok.tokenize({i: [{"caption": h or "<empty>"}] for i, h in enumerate(hypotheses)})
  return float(Bleu(4).compute_score(gts, res, verbose=0)[0][3])


# Words a caption cannot end on ("a man in a", "with a"): articles, prepositions, conjunctions, possessives.
DANGLING = frozenset("a an the in on of with and or at to for by from into onto near under over behind "
                     "through across down up his her their its while as is are".split())


def dangling_rate(hypotheses: Sequence[str]) -> float:
  """Share of captions whose last word is one a caption cannot end on (`DANGLING`); empty ones count."""
  ends = [normalize(h)[-1:] for h in hypotheses]
  return sum(not e or e[0] in DANGLING for e in ends) / max(len(hypotheses), 1)


def all_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]], meteor: bool = True) -> dict:
  """Everything the evaluation command reports. The Java metrics (METEOR, coco-caption's BLEU-4) are None
  without Java or with meteor=False."""
  return {**bleu(hypotheses, references), **coco_metrics(hypotheses, references, meteor),
          "bleu4_coco": coco_bleu4(hypotheses, references) if meteor else None,
          "dangling": dangling_rate(hypotheses)}
