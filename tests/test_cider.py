"""The batched CIDEr-D reward equals pycocoevalcap's CIDEr-D, and scores a batch against fixed train statistics."""
import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from jaxcap.cider import CiderD
from jaxcap.data import synthetic
from jaxcap.data.vocab import normalize


def _corpus(n_images, seed=0):
  rng = np.random.default_rng(seed)
  refs = []
  for _ in range(n_images):
    _, caps = synthetic.make_example(rng, 16)
    refs.append([" ".join(normalize(c)) for c in caps])
  return refs


def _hypotheses(refs, seed=1):
  """Near-misses and oddities: a reference, a shuffled one, a cut one, repeats, empty, unseen words."""
  rng = np.random.default_rng(seed)
  out = []
  for i, r in enumerate(refs):
    words = r[i % len(r)].split()
    kind = i % 6
    if kind == 1:
      words = list(rng.permutation(words))
    elif kind == 2:
      words = words[: max(1, len(words) // 2)]
    elif kind == 3:
      words = words + words[:3]
    elif kind == 4:
      words = []
    elif kind == 5:
      words = words[:2] + ["zebra", "xylophone", "zebra"] + words[2:]
    out.append(" ".join(words))
  return out


def test_equals_pycocoevalcap_cider_d():
  refs = _corpus(40)
  hyps = _hypotheses(refs)
  refs[3] = refs[3][:3]  # a varying number of references per image
  _, want = Cider().compute_score({i: r for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})
  got = CiderD(refs).score(hyps, refs)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  assert got.max() > 1.0 and got[4] == 0.0  # exact references score high, the empty caption 0


def test_many_hypotheses_per_image_against_fixed_train_statistics():
  train = _corpus(60, seed=2)
  scorer = CiderD(train)
  images = [0, 5, 9]
  hyps = [train[i][k] for i in images for k in range(5)]
  ref_index = np.repeat(images, 5)
  batched = scorer.score(hyps, train, ref_index=ref_index)
  one_by_one = np.concatenate([scorer.score([h], [train[i]]) for h, i in zip(hyps, ref_index)])
  np.testing.assert_allclose(batched, one_by_one, atol=1e-12)
  # Document frequencies come from the corpus given at construction, not from the captions scored.
  _, corpus_df = Cider().compute_score({i: train[i] for i in images}, {i: [train[i][0]] for i in images})
  assert not np.allclose(scorer.score([train[i][0] for i in images], [train[i] for i in images]), corpus_df)


def test_rejects_a_hypothesis_without_references():
  with pytest.raises(ValueError, match="at least one reference"):
    CiderD(_corpus(3)).score(["a red circle"], [[]])
