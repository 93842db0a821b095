"""Consensus reranking (jaxcap.consensus): beams re-ranked by CIDEr-D against the captions of the nearest train
images; an index in a workdir (built by `python -m jaxcap.consensus`) is found by the Captioner, so evaluate,
caption, the service and the app all use it; weight 0 is the plain beam order; a damaged or mismatched index is
one line, never a crash; an index holding an evaluated split's images (their own references) is refused."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxcap import consensus, evaluate, evaluator, inference
from jaxcap.cider import CiderD
from jaxcap.consensus import build as consensus_build
from jaxcap.consensus import index as consensus_index
from jaxcap.consensus.__main__ import main as consensus_main
from jaxcap.data import vocab as V
from jaxcap.inference import Captioner

DOG, CAT = "a dog runs on the grass", "a cat sits on a red sofa"


def _index(k=1, weight=4.0):
  # Two train images: one whose captions are about a dog, one about a cat; grids point along channel 0 / 1.
  feats = np.eye(2, 4, dtype=np.float16)
  refs = [[DOG, "a brown dog runs on the grass"], [CAT, "a cat sits on a sofa"]]
  return consensus.Index(feats, refs, ["dog.jpg", "cat.jpg"], "/data/pets", "small_cnn-24", k, weight)


def _vocab():
  return V.Vocab(list(V.SPECIALS) + sorted(set((DOG + " " + CAT).split())))


def _tokens(vocab, *captions, length=8):
  out = np.full((1, len(captions), length), V.PAD_ID, np.int32)
  for j, c in enumerate(captions):
    ids = [vocab.tokens.index(w) for w in c.split()] + [V.END_ID]
    out[0, j, :len(ids)] = ids
  return out


def test_the_caption_the_nearest_train_images_agree_with_goes_first():
  vocab, index = _vocab(), _index()
  grid = np.zeros((1, 2, 2, 4), np.float32)
  grid[..., 0] = 1.0  # looks like the dog image
  tokens = _tokens(vocab, CAT, DOG, "a")
  scores = np.array([[-1.0, -1.5, -np.inf]])  # the model prefers the cat; the third slot is empty
  rr = consensus.Reranker(index, vocab)
  order, new = rr(grid, tokens, scores, evaluator.Settings(beam_size=3))
  assert order[0].tolist() == [1, 0, 2] and new[0, 2] == -np.inf
  # The score added is weight x CIDEr-D against the neighbour's references (train document frequencies).
  want = CiderD(index.references).score([DOG, CAT], [index.references[0]] * 2)
  np.testing.assert_allclose(new[0, :2], [-1.5 + 4 * want[0], -1.0 + 4 * want[1]], rtol=1e-6)
  # Weight 0 (or a weight too small to outweigh the model) keeps the beam order.
  assert rr(grid, tokens, scores, evaluator.Settings(beam_size=3, rerank_weight=0.0)) is None
  order, _ = rr(grid, tokens, scores, evaluator.Settings(beam_size=3, rerank_weight=1e-3))
  assert order[0].tolist() == [0, 1, 2]
  cat = np.zeros_like(grid)
  cat[..., 1] = 1.0  # looks like the cat image: the model's order stands
  order, _ = rr(cat, tokens, scores, evaluator.Settings(beam_size=3))
  assert order[0].tolist() == [0, 1, 2]


def test_a_caption_cut_at_max_len_stays_after_every_ended_one_as_beam_search_ranks_it():
  vocab, index = _vocab(), _index()
  grid = np.zeros((1, 2, 2, 4), np.float32)
  grid[..., 0] = 1.0
  tokens = _tokens(vocab, CAT, DOG, length=8)
  tokens[0, 1, 6:] = vocab.tokens.index("grass")  # the dog caption never ends: cut at max_len
  order, new = consensus.Reranker(index, vocab)(grid, tokens, np.array([[-1.0, -0.5]]), evaluator.Settings(3))
  assert order[0].tolist() == [0, 1] and new[0, 1] > new[0, 0]  # it agrees more, and still comes second


def test_neighbours_are_the_k_nearest_by_cosine_of_the_pooled_grids():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(50, 3, 3, 8)).astype(np.float32)
  index = consensus.Index(consensus.pool(train).astype(np.float16), [["x"]] * 50, [f"{i}.jpg" for i in range(50)],
                          "d", "e", 5, 1.0)
  query = rng.normal(size=(4, 3, 3, 8)).astype(np.float32)
  got = index.neighbours(query, 5)
  sims = consensus.pool(query) @ consensus.pool(train).T
  np.testing.assert_array_equal(got, np.argsort(-sims, 1)[:, :5])


def test_an_index_round_trips_and_a_damaged_one_is_one_line_naming_it(tmp_path):
  path = str(tmp_path / "consensus.npz")
  _index(k=7, weight=2.5).save(path)
  back = consensus.Index.load(path)
  assert (back.k, back.weight, back.encoder, back.references) == (7, 2.5, "small_cnn-24", _index().references)
  # The train images it holds (row order) and their dataset: what evaluation checks a split against.
  assert (back.image_ids, back.dataset, back.path) == (["dog.jpg", "cat.jpg"], "/data/pets", path)
  np.testing.assert_array_equal(back.features, _index().features)
  with open(path, "r+b") as f:
    f.truncate(100)
  with pytest.raises(consensus.ConsensusError, match=f"{path}: not a readable consensus index"):
    consensus.Index.load(path)
  meta = {"format": consensus_index._FORMAT}
  np.savez(path, features=np.zeros((1, 4), np.float16), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
  with pytest.raises(consensus.ConsensusError, match="not a readable consensus index .KeyError: 'references'"):
    consensus.Index.load(path)
  meta.update(encoder="e", k=1, weight=1.0, dataset="d", references=[["x"]], image_ids=["a.jpg", "b.jpg"])
  np.savez(path, features=np.zeros((1, 4), np.float16), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
  with pytest.raises(consensus.ConsensusError, match=f"^{path}: 1 grids, 1 caption sets and 2 image names; rebuild"):
    consensus.Index.load(path)


def test_an_index_of_the_format_before_image_names_is_refused_with_the_rebuild_command(tmp_path):
  """Format 1 recorded no train image names, so it cannot be checked against a split: rebuilt, not guessed."""
  path = str(tmp_path / "consensus.npz")
  old = {"format": 1, "encoder": "small_cnn-24", "k": 15, "weight": 4.0, "references": [[DOG], [CAT]]}
  np.savez(path, features=np.eye(2, 4, dtype=np.float16), meta=np.frombuffer(json.dumps(old).encode(), np.uint8))
  with pytest.raises(consensus.ConsensusError) as e:
    consensus.Index.load(path)
  assert str(e.value) == (f"{path}: consensus index format 1, this code reads {consensus_index._FORMAT}; rebuild it "
                          "with `python -m jaxcap.consensus --checkpoint <workdir>`")
  assert consensus_index._FORMAT > 1


def test_a_split_holding_any_of_the_index_train_images_is_refused_naming_the_overlap(tmp_path):
  index = _index()
  consensus.check_disjoint(index, ["bird.jpg", "fish.jpg"], "test")  # disjoint: nothing to say
  consensus.check_disjoint(index, [], "dev")
  with pytest.raises(consensus.ConsensusError) as e:
    consensus.check_disjoint(index, ["bird.jpg", "cat.jpg"], "test")
  msg = str(e.value)
  assert msg.startswith("consensus index: 1 of the 2 test images are among the 2 train images it was built from "
                        "(/data/pets), e.g. cat.jpg") and "\n" not in msg
  assert "rebuild it from the dataset whose train split excludes them" in msg and "--rerank_weights 0" in msg
  path = str(tmp_path / "consensus.npz")
  index.save(path)  # a saved (or loaded) index names its file
  with pytest.raises(consensus.ConsensusError, match=f"^{path}: 2 of the 3 dev images .* e.g. dog.jpg"):
    consensus.check_disjoint(index, ["dog.jpg", "cat.jpg", "bird.jpg"], "dev")


def test_the_index_belongs_to_a_workdir_not_to_a_loose_step_directory(tmp_path):
  from jaxcap import checkpoint
  assert checkpoint.workdir_of(str(tmp_path / "w" / "checkpoints" / "1250")) == str(tmp_path / "w")
  assert checkpoint.workdir_of(str(tmp_path / "w" / "best" / "1250") + "/") == str(tmp_path / "w")
  assert checkpoint.workdir_of(str(tmp_path / "models" / "1250")) is None


@pytest.fixture
def indexed(trained, tmp_path):
  """A copy of the tiny trained workdir with a consensus index built by the CLI (weight large enough that the
  consensus decides), and the workdir without one."""
  workdir = str(tmp_path / "indexed")
  shutil.copytree(trained[0], workdir)
  assert consensus_main(["--checkpoint", workdir, "--k", "3", "--weight", "100"]) == 0
  return workdir, trained[0]


def _favour_repeats(workdir):
  """The tiny model's beams are 'a', 'a a', 'a a a' (best first), and 'a' is in every reference, so no beam
  agrees with the neighbours more than another. Give every other train image the reference 'a a a': beams
  that repeat 'a' now agree with the neighbours among them."""
  path = os.path.join(workdir, consensus.FILENAME)
  index = consensus.Index.load(path)
  index.references = [["a a a"] if i % 2 else refs for i, refs in enumerate(index.references)]
  index.save(path)


@pytest.mark.slow
def test_a_workdir_index_reranks_what_the_captioner_says(indexed):
  workdir, plain_dir = indexed
  cap, plain = Captioner.load(workdir), Captioner.load(plain_dir)
  assert plain.reranker is None and cap.reranker is not None
  index = cap.reranker.index
  # Every train image of the synthetic dataset, with its captions as the metrics read them.
  assert len(index.features) == len(index.references) > 0 and index.encoder == inference.encoder_id(cap)
  assert all(r == " ".join(V.normalize(r)) for refs in index.references for r in refs)
  assert any("triangle" in r for refs in index.references for r in refs)
  _favour_repeats(workdir)
  cap = Captioner.load(workdir)
  index = cap.reranker.index
  images = sorted(os.listdir(os.path.join(plain.config.data.synthetic_dir, "Images")))[:6]
  paths = [os.path.join(plain.config.data.synthetic_dir, "Images", n) for n in images]
  pixels = np.stack([cap.preprocess(p) for p in paths])
  got, base = cap.caption_pixels(pixels, beam_size=3), plain.caption_pixels(pixels, beam_size=3)
  grids = cap.encode_pixels(pixels)
  moved = 0
  for i, (g, b) in enumerate(zip(got, base)):
    assert sorted(x.caption for x in g.beams) == sorted(x.caption for x in b.beams)  # the same beams, re-ordered
    texts = [" ".join(V.normalize(x.caption)) for x in b.beams]
    agree = index.consensus(grids[i:i + 1], [texts], 3)[0]
    best = max(range(len(b.beams)), key=lambda j: (b.beams[j].score + 100 * agree[j], -j))
    assert g.caption == b.beams[best].caption and g.beams[0].log_prob == b.beams[best].log_prob
    moved += g.caption != b.caption
  assert moved > 0
  # Greedy has nothing to re-rank.
  assert [r.caption for r in cap.caption_pixels(pixels)] == [r.caption for r in plain.caption_pixels(pixels)]


def test_the_index_reads_the_feature_cache_only_when_it_holds_this_encoders_grids(indexed, tmp_path):
  from jaxcap.data import dataset, tfds_builder
  workdir, _ = indexed
  cap = Captioner.load(workdir)
  builder = dataset.prepare(cap.config.data, verbose=False)
  from_cache = consensus_build.build(cap, builder, batch_size=8, progress=False)
  cached_dir = cap.config.data.feature_cache_dir
  cap.config.data.feature_cache_dir = str(tmp_path / "empty")  # no cache: every train image encoded
  encoded = consensus_build.build(cap, builder, batch_size=8, progress=False)
  np.testing.assert_allclose(encoded.features.astype(np.float32), from_cache.features.astype(np.float32),
                             atol=2e-3)
  assert encoded.references == from_cache.references and encoded.encoder == from_cache.encoder
  # Each row's train file name, in row order (the references are looked up by them), and the dataset.
  train_names, captions = tfds_builder.split_captions(builder, "train")
  assert encoded.image_ids == from_cache.image_ids and sorted(from_cache.image_ids) == sorted(train_names)
  assert from_cache.references[3] == [" ".join(V.normalize(c)) for c in captions[from_cache.image_ids[3]]]
  assert from_cache.dataset == getattr(builder, "cache_id", builder.data_dir)
  assert consensus.Index.load(os.path.join(workdir, consensus.FILENAME)).dataset == dataset.describe(cap.config.data)
  # Other encoder weights (as a fine-tuned checkpoint has): the cache of the frozen ones is not used, and the
  # index is another one.
  cap.config.data.feature_cache_dir = cached_dir
  rng = np.random.default_rng(0)
  cap.variables["params"] = {**cap.variables["params"], "encoder": jax.tree.map(
      lambda a: a + 0.3 * rng.normal(size=a.shape).astype(a.dtype), cap.variables["params"]["encoder"])}
  tuned = consensus_build.build(cap, builder, batch_size=8, progress=False)
  assert tuned.encoder != from_cache.encoder
  assert not np.allclose(tuned.features.astype(np.float32), from_cache.features.astype(np.float32), atol=2e-3)


@pytest.mark.slow
def test_evaluate_sweeps_rerank_weights_and_weight_0_is_the_plain_beam_search(indexed, tmp_path):
  workdir, plain_dir = indexed
  _favour_repeats(workdir)
  args = ["--split", "test", "--beam", "3", "--no_meteor"]
  plain = evaluate.run(evaluate.parser().parse_args(["--checkpoint", plain_dir, *args, "--out", str(tmp_path / "p")]),
                       log=lambda *a: None)
  swept = evaluate.run(evaluate.parser().parse_args(["--checkpoint", workdir, *args, "--rerank_weights", "100", "0",
                                                     "--out", str(tmp_path / "s")]), log=lambda *a: None)
  on, off = swept["results"]
  assert (on["rerank"], off["rerank"]) == (100.0, 0.0)
  assert {k: off[k] for k in ("bleu1", "bleu4", "cider")} == {k: plain[k] for k in ("bleu1", "bleu4", "cider")}
  captions = lambda name: [json.loads(l)["caption"] for l in open(tmp_path / name)]  # noqa: E731
  assert captions("s") != captions("p")  # the JSONL holds the first setting's captions: re-ranked
  default = evaluate.run(evaluate.parser().parse_args(["--checkpoint", workdir, *args, "--out", str(tmp_path / "d")]),
                         log=lambda *a: None)
  assert default["rerank"] == 100.0 and default["cider"] == on["cider"]  # the index's own weight


@pytest.mark.slow
def test_evaluate_refuses_to_rerank_a_split_whose_images_are_in_the_index(indexed, tmp_path, capsys, monkeypatch):
  """An index whose train images include test photos (as one built with --data_dir on a dataset whose train split
  holds them would) would score their captions against their own references: one line, before decoding."""
  from jaxcap.data import dataset, tfds_builder
  workdir, _ = indexed
  path = os.path.join(workdir, consensus.FILENAME)
  index = consensus.Index.load(path)
  config = Captioner.load(workdir).config
  test_names = tfds_builder.split_captions(dataset.prepare(config.data, verbose=False), "test")[0]
  assert not set(test_names) & set(index.image_ids)  # as built: the synthetic train split excludes them
  index.image_ids[5] = test_names[1]
  index.save(path)
  args = ["--checkpoint", workdir, "--split", "test", "--no_meteor", "--out", str(tmp_path / "o"), "--beam"]
  with monkeypatch.context() as m, pytest.raises(consensus.ConsensusError) as e:
    m.setattr(evaluator, "evaluate", lambda *a, **k: pytest.fail("decoded a split the index holds images of"))
    evaluate.run(evaluate.parser().parse_args(args + ["3"]), log=lambda *a: None)
  assert str(e.value).startswith(f"{path}: 1 of the {len(test_names)} test images are among the "
                                 f"{len(index.image_ids)} train images it was built from "
                                 f"({dataset.describe(config.data)}), e.g. {test_names[1]}")
  assert not os.path.exists(tmp_path / "o")
  # The command line: one line, exit status 2.
  capsys.readouterr()
  assert evaluate.main(args + ["3"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f"error: {path}: 1 of the") and "--rerank_weights 0" in err[-1]
  assert f"python -m jaxcap.consensus --checkpoint {workdir} --data_dir DIR" in err[-1]
  # Weight 0 or greedy: nothing is re-ranked, so nothing leaks. Any weight above 0 among those tried refuses.
  assert evaluate.run(evaluate.parser().parse_args(args + ["3", "--rerank_weights", "0"]),
                      log=lambda *a: None)["rerank"] == 0.0
  assert evaluate.run(evaluate.parser().parse_args(args + ["1"]), log=lambda *a: None)["rerank"] == 0.0
  with pytest.raises(consensus.ConsensusError, match="1 of the"):
    evaluate.run(evaluate.parser().parse_args(args + ["3", "--rerank_weights", "0", "4"]), log=lambda *a: None)
  # The train split is the index's own by design: re-ranked with a warning that its figures are optimistic.
  seen = []
  train = ["--checkpoint", workdir, "--split", "train", "--limit", "2", "--no_meteor", "--out", str(tmp_path / "t")]
  assert evaluate.run(evaluate.parser().parse_args(train), log=seen.append)["rerank"] == 100.0
  assert any("re-ranked train figures are optimistic" in line for line in seen)


def test_an_index_of_another_encoder_or_a_damaged_one_is_a_warning_and_no_reranking(indexed):
  workdir, _ = indexed
  path = os.path.join(workdir, consensus.FILENAME)
  index = consensus.Index.load(path)
  index.encoder = "efficientnet_lite1-240"
  index.save(path)
  seen = []
  cap = Captioner.load(workdir, warn=seen.append)
  assert cap.reranker is None and len(seen) == 1
  assert f"{path}: built from efficientnet_lite1-240 grids" in seen[0] and "not re-ranked" in seen[0]
  with open(path, "wb") as f:
    f.write(b"not an npz")
  cap = Captioner.load(workdir, warn=seen.append)
  assert cap.reranker is None and "not a readable consensus index" in seen[-1]
  assert cap.warnings[-1] == seen[-1]  # the app shows a Captioner's warnings
  # Rebuilding replaces it without a word about the old one.
  assert consensus_build.write(workdir, k=3, weight=100.0, log=seen.append) == path and len(seen) == 3
  assert "consensus index of" in seen[-1] and Captioner.load(workdir).reranker is not None


def test_the_encoder_digest_is_stable_so_indexes_built_earlier_stay_valid():
  """The digest an index stores is compared with the checkpoint's at every load: if the way it is computed
  changes, every index users have built is refused ("rebuild it") and their captions stop being re-ranked.
  Pinned on fixed weights (params hashed before batch statistics)."""
  import types
  ns = types.SimpleNamespace
  weights = {"params": {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
             "batch_stats": {"bn": {"mean": np.ones(3, np.float32)}}}
  member = ns(config=ns(model=ns(encoder="small_cnn")), model=ns(encoder=ns(preprocessing=ns(size=24))),
              encoder_variables=lambda: weights)
  assert inference.encoder_id(ns(members=[member])) == "small_cnn-24-a4f9bf32b636"
