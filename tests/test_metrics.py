"""Captioning metrics equal nltk and pycocoevalcap computed directly."""

import pytest
from nltk.translate.bleu_score import corpus_bleu

from jaxcap import metrics

HYPS = ["A dog runs on the grass .", "a man rides a bike", "two children play in the water"]
REFS = [["A dog is running on the grass .", "a brown dog runs across a lawn", "the dog runs"],
        ["A man riding a bicycle .", "a person on a bike", "a man rides his bike down the road"],
        ["Two kids splash in a pool", "children play in water", "two children are playing in the water ."]]


def test_bleu_equals_direct_nltk_on_normalized_tokens():
  got = metrics.bleu(HYPS, REFS)
  refs = [[r.lower().replace(" .", "").split() for r in rs] for rs in REFS]
  hyps = [h.lower().replace(" .", "").split() for h in HYPS]
  assert got["bleu4"] == pytest.approx(corpus_bleu(refs, hyps))
  assert got["bleu1"] == pytest.approx(corpus_bleu(refs, hyps, weights=(1.0,)))
  assert 0 < got["bleu4"] < got["bleu1"] <= 1


@pytest.mark.slow  # METEOR runs a Java subprocess
def test_coco_metrics_equal_direct_pycocoevalcap():
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  got = metrics.coco_metrics(HYPS, REFS, meteor=metrics.java_available())
  gts = {i: [" ".join(metrics.normalize(r)) for r in rs] for i, rs in enumerate(REFS)}
  res = {i: [" ".join(metrics.normalize(h))] for i, h in enumerate(HYPS)}
  assert got["cider"] == pytest.approx(Cider().compute_score(gts, res)[0])
  assert got["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0])
  if metrics.java_available():
    from pycocoevalcap.meteor.meteor import Meteor
    assert got["meteor"] == pytest.approx(Meteor().compute_score(gts, res)[0])
    assert 0 < got["meteor"] < 1


def test_perfect_captions_score_one():
  refs = [["a dog runs", "a dog is running"]] * 2
  assert metrics.bleu(["a dog is running", "a dog is running"], refs)["bleu4"] == pytest.approx(1.0)
  assert metrics.sentence_bleu4("a dog is running", refs[0]) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
    metrics.bleu(["a", "b"], [["a"]])


@pytest.mark.slow  # the PTB tokenizer runs a Java subprocess
def test_coco_bleu4_is_pycocoevalcaps_bleu_on_ptb_tokens():
  if not metrics.java_available():
    pytest.skip("needs Java")
  from pycocoevalcap.bleu.bleu import Bleu
  hyps, refs = ["A dog runs on the grass.", "a man rides a bike"], REFS[:2]
  got = metrics.coco_bleu4(hyps, refs)
  gts = {i: [" ".join(metrics.normalize(r)) for r in rs] for i, rs in enumerate(refs)}
  res = {i: [" ".join(metrics.normalize(h))] for i, h in enumerate(hyps)}
  # PTB tokens of this text are its normalized words, so the toolkit's score is Bleu on them ...
  assert got == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
  # ... which is not nltk's corpus BLEU (shortest vs closest reference length): papers print this one.
  assert got != pytest.approx(metrics.bleu(hyps, refs)["bleu4"])


def test_dangling_rate_counts_captions_that_end_on_a_function_word():
  assert metrics.dangling_rate(["a man in a", "a dog runs .", "two kids play with a", "", "A man on"]) == 0.8
  assert metrics.dangling_rate(["a dog runs", "people stand in the street"]) == 0.0
