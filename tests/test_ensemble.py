"""Ensembles: one member is the single decoder bit for bit, a model twice is that model, two models score by the
mean of their log-probabilities, members on other encoders each read their own grid, and members that differ in
vocabulary are refused at load."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcap import decode
from jaxcap.checkpoint import CheckpointError
from jaxcap.data import vocab as V
from jaxcap.inference import Captioner
from jaxcap.models.decoder import Decoder


def model(seed, mode="attend", hidden=16, deep_output=False, vocab_size=14, grid_shape=(2, 2, 6)):
  d = Decoder(vocab_size=vocab_size, mode=mode, embed_dim=8, hidden_dim=hidden, attention_dim=8, dropout=0.0,
              deep_output=deep_output)
  # One grid for all members of the same grid_shape (the same seed); another encoder's grid for another shape.
  grid = jnp.asarray(np.random.default_rng(0).normal(size=(6, *grid_shape)), jnp.float32)
  v = jax.jit(d.init)(jax.random.key(seed), grid, jnp.zeros((6, 3), jnp.int32))
  params = jax.tree.map(lambda a: a * 3.0, v["params"])  # peakier distributions than the init's
  params["out"]["bias"] = params["out"]["bias"].at[V.END_ID].add(1.0)
  return d, params, grid


def _same_bits(got, want):
  for g, w in zip(got, want):
    assert np.asarray(g).tobytes() == np.asarray(w).tobytes()


def _greedy_by_hand(members, grid, max_len):
  """A plain Python loop: at each step the argmax of the members' mean log-probability (one member: of its
  logits, as greedy always decoded). grid: one for all members, or a list, one per member."""
  grids = grid if isinstance(grid, list) else [grid] * len(members)
  states = [d.apply({"params": p}, g, method=Decoder.init_state) for (d, p), g in zip(members, grids)]
  tok, out = jnp.full((grids[0].shape[0],), V.START_ID), []
  for _ in range(max_len):
    logits = []
    for i, (d, p) in enumerate(members):
      lg, _, states[i] = d.apply({"params": p}, states[i], tok, method=Decoder.step)
      logits.append(decode.allowed_logits(lg))
    score = logits[0] if len(members) == 1 else np.mean([jax.nn.log_softmax(lg) for lg in logits], 0)
    tok = jnp.argmax(score, -1)
    out.append(np.asarray(tok))
  tokens = np.stack(out, 1)
  return np.where(decode.caption_mask(jnp.asarray(tokens)), tokens, V.PAD_ID)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["attend", "show_tell"])
def test_one_member_is_the_single_decoder_bit_for_bit(mode):
  d, p, grid = model(0, mode)
  _same_bits(decode.greedy((d,), (p,), grid, max_len=8), decode.greedy(d, p, grid, max_len=8))
  np.testing.assert_array_equal(np.asarray(decode.greedy(d, p, grid, max_len=8)[0]),
                                _greedy_by_hand([(d, p)], grid, 8))
  for k, alpha in ((2, 0.0), (3, 1.0)):
    _same_bits(decode.beam_search((d,), (p,), grid, k, 8, alpha), decode.beam_search(d, p, grid, k, 8, alpha))


@pytest.mark.slow
def test_a_model_twice_is_that_model():
  d, p, grid = model(0)
  # (x + x) / 2 is x exactly: the same captions, scores and attention, to the bit.
  _same_bits(decode.greedy((d, d), (p, p), grid, max_len=8), decode.greedy(d, p, grid, max_len=8))
  _same_bits(decode.beam_search((d, d), (p, p), grid, 3, 8, 1.0), decode.beam_search(d, p, grid, 3, 8, 1.0))


def _caption_log_prob(d, p, grid, tokens):
  """log p(caption | image) under one decoder, teacher-forced: tokens [B, K, L] -> [B, K]."""
  b, k, length = tokens.shape
  lp = decode.sequence_log_probs(d, p, jnp.repeat(grid, k, axis=0), jnp.asarray(tokens).reshape(b * k, length))
  return np.asarray(lp.sum(-1)).reshape(b, k)


@pytest.mark.slow
def test_two_models_score_every_beam_by_the_mean_of_their_log_probs():
  (a, pa, grid), (b, pb, _) = model(1), model(2, hidden=24, deep_output=True)  # different architectures too
  tokens, scores, log_probs, alphas = (np.asarray(x) for x in decode.beam_search((a, b), (pa, pb), grid, 3, 8, 0.0,
                                                                                  with_alphas=True))
  want = (_caption_log_prob(a, pa, grid, tokens) + _caption_log_prob(b, pb, grid, tokens)) / 2
  np.testing.assert_allclose(log_probs, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scores, log_probs)                       # alpha 0: the score is the log-probability
  np.testing.assert_allclose(alphas[tokens != V.PAD_ID].sum(-1), 1.0, atol=1e-5)  # the members' mean attention
  # The ensemble is a model of its own: its best captions are not just one member's.
  best_a, best_b = (np.asarray(decode.beam_search(d, p, grid, 3, 8, 0.0)[0])[:, 0] for d, p in ((a, pa), (b, pb)))
  assert not np.array_equal(best_a, best_b)
  assert not (np.array_equal(tokens[:, 0], best_a) or np.array_equal(tokens[:, 0], best_b))


@pytest.mark.slow
def test_two_models_greedy_takes_the_argmax_of_the_mean_log_prob():
  (a, pa, grid), (b, pb, _) = model(1), model(3)
  tokens, _ = decode.greedy((a, b), (pa, pb), grid, max_len=8)
  np.testing.assert_array_equal(np.asarray(tokens), _greedy_by_hand([(a, pa), (b, pb)], grid, 8))


def test_an_attending_and_a_show_tell_member_show_the_attention_of_the_attending_one():
  (a, pa, grid), (b, pb, _) = model(1), model(2, mode="show_tell")
  tokens, alphas = (np.asarray(x) for x in decode.greedy((a, b), (pa, pb), grid, max_len=6))
  assert alphas.shape == (6, 6, 4)
  np.testing.assert_allclose(alphas[tokens != V.PAD_ID].sum(-1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_members_on_other_encoders_each_read_their_own_grid():
  # a reads 2x2x6 grids, b 3x3x5 (another encoder's): greedy and beam search take one grid per member.
  (a, pa, ga), (b, pb, gb) = model(1), model(2, hidden=24, grid_shape=(3, 3, 5))
  tokens, alphas = (np.asarray(x) for x in decode.greedy((a, b), (pa, pb), (ga, gb), max_len=8))
  np.testing.assert_array_equal(tokens, _greedy_by_hand([(a, pa), (b, pb)], [ga, gb], 8))
  tokens, scores, log_probs, alphas = (np.asarray(x) for x in decode.beam_search((a, b), (pa, pb), (ga, gb), 3, 8, 0.0,
                                                                                  with_alphas=True))
  want = (_caption_log_prob(a, pa, ga, tokens) + _caption_log_prob(b, pb, gb, tokens)) / 2
  np.testing.assert_allclose(log_probs, want, rtol=1e-5, atol=1e-5)
  # The attention shown is the first member's, over its 2x2 grid.
  assert alphas.shape == (6, 3, 8, 4)
  np.testing.assert_allclose(alphas[tokens != V.PAD_ID].sum(-1), 1.0, atol=1e-5)
  # A grid per member that are all the same grid is that grid, to the bit; a grid too few is refused.
  (c, pc, _) = model(3)
  _same_bits(decode.beam_search((a, c), (pa, pc), (ga, ga), 3, 8, 1.0), decode.beam_search((a, c), (pa, pc), ga, 3, 8, 1.0))
  with pytest.raises(ValueError, match="1 feature grids for 2 ensemble members"):
    decode.greedy((a, b), (pa, pb), (ga,), max_len=8)


# ---------------------------------------------------------------------------------------------------------
# The Captioner (and through it the CLIs and the app)
# ---------------------------------------------------------------------------------------------------------
def _images(cfg, n=3):
  return [os.path.join(cfg.data.synthetic_dir, "Images", f"synth_{i:05d}.jpg") for i in range(n)]


@pytest.mark.slow
def test_captioner_of_a_checkpoint_twice_captions_as_the_checkpoint(trained):
  workdir, cfg = trained
  single, double = Captioner.load(workdir), Captioner.load([workdir, workdir])
  assert len(double.members) == 2 and double.sources == [single.source] * 2
  for beam in (1, 3):
    want, got = single.caption(_images(cfg), beam_size=beam), double.caption(_images(cfg), beam_size=beam)
    for w, g in zip(want, got):
      assert [(x.caption, x.score, x.log_prob) for x in g.beams] == [(x.caption, x.score, x.log_prob) for x in w.beams]
      np.testing.assert_array_equal(g.attention, w.attention)


def _copy_with_vocab(workdir, dest, edit):
  """A copy of a workdir whose checkpoints carry the vocabulary edit(tokens) (same size: the decoder still fits)."""
  shutil.copytree(workdir, dest)
  for step in os.listdir(os.path.join(dest, "checkpoints")):
    path = os.path.join(dest, "checkpoints", step, "meta", "metadata")
    meta = json.load(open(path))
    meta["vocab"] = edit(meta["vocab"])
    json.dump(meta, open(path, "w"))
  return dest


def test_a_vocabulary_mismatch_is_refused_at_load_naming_both(trained, tmp_path):
  workdir, _ = trained
  swapped = _copy_with_vocab(workdir, str(tmp_path / "other"), lambda t: t[:5] + [t[6], t[5]] + t[7:])
  Captioner.load(swapped)  # a fine checkpoint on its own
  with pytest.raises(CheckpointError) as e:
    Captioner.load([workdir, swapped])
  message = str(e.value)
  assert "\n" not in message and "vocabularies differ" in message and "first at id 5" in message
  assert os.path.join(workdir, "checkpoints") in message and os.path.join(swapped, "checkpoints") in message


@pytest.fixture(scope="module")
def trained_at_32(trained, tmp_path_factory):
  """The `trained` model's twin on a larger encoder input (32 px, a 4x4 grid instead of 3x3): another encoder."""
  from jaxcap import train_lib
  cfg = trained[1].copy_and_resolve_references()
  cfg.model.image_size = 32
  workdir = str(tmp_path_factory.mktemp("at32") / "workdir")
  train_lib.train_and_evaluate(cfg, workdir)
  return workdir


def _beam_by_hand(cap, grids, k=3):
  return [[cap.vocab.to_text(t) for t in beams]
          for beams in np.asarray(decode.beam_search(cap.decoders, cap.decoder_params, grids, k, 20, 0.0)[0])]


@pytest.mark.slow
def test_members_with_other_encoder_weights_each_encode_the_image(trained):
  workdir, cfg = trained
  cap = Captioner.load(workdir)
  params = jax.tree.map(lambda x: x, cap.variables["params"])
  params["encoder"] = jax.tree.map(lambda x: x * 1.5, params["encoder"])  # fine-tuned apart
  tuned = Captioner(cap.model, {**cap.variables, "params": params}, cap.vocab, cap.config, cap.step, "/runs/tuned")
  ens = Captioner(cap.model, cap.variables, cap.vocab, cap.config, cap.step, cap.source, [tuned, cap])
  pixels = np.stack([cap.preprocess(f) for f in _images(cfg)])
  a, b, c = ens.encode_pixels(pixels)
  np.testing.assert_array_equal(a, cap.encode_pixels(pixels))     # each member through its own encoder weights
  np.testing.assert_array_equal(b, tuned.encode_pixels(pixels))
  assert not np.allclose(a, b)
  assert c is a                                                     # the third member shares the first's grid
  got = [[beam.caption for beam in r.beams] for r in ens.caption_pixels(pixels, 3)]
  assert got == _beam_by_hand(ens, (a, b, a))


@pytest.mark.slow
def test_an_ensemble_across_input_sizes_encodes_at_the_largest_and_shows_the_first_attention(trained, trained_at_32,
                                                                                          tmp_path, capsys):
  from jaxcap import caption, evaluate
  workdir, cfg = trained
  small, large = Captioner.load(workdir), Captioner.load(trained_at_32)
  ens = Captioner.load([workdir, trained_at_32])
  assert (small.preprocessing.size, large.preprocessing.size, ens.preprocessing.size) == (24, 32, 32)
  pixels = np.stack([ens.preprocess(f) for f in _images(cfg)])      # at 32 px
  grid_small, grid_large = ens.encode_pixels(pixels)
  # The 24-px encoder sees the pixels resized as training resizes; the 32-px one sees them as they are.
  from jaxcap.data import images as images_lib
  np.testing.assert_array_equal(grid_small, small.encode_pixels(np.stack([images_lib.resize(p, 24) for p in pixels])))
  np.testing.assert_array_equal(grid_large, large.encode_pixels(pixels))
  assert grid_small.shape[1:3] == (3, 3) and grid_large.shape[1:3] == (4, 4)
  results = ens.caption(_images(cfg), beam_size=3)
  assert [[b.caption for b in r.beams] for r in results] == _beam_by_hand(ens, (grid_small, grid_large))
  # The attention shown is the first member's, over its 3x3 grid, one map per word.
  assert all(r.attention.shape == (len(r.words), 3, 3) for r in results)
  # The app's batching service, the CLIs and the evaluator take the mixed ensemble too.
  from jaxcap.serving import CaptionService, Request
  service = CaptionService(ens, buckets=(1, 2), window_s=0.0, warm=())
  try:
    got = [service.caption(p, Request(3, 20, 0.0), timeout=60).beam for p in pixels]
  finally:
    service.close()
  assert [r.caption for r in got] == [r.caption for r in results]
  argv = ["--checkpoint", workdir, "--checkpoint", trained_at_32]
  assert caption.main([*argv, "--beam", "3", "--alpha", "1", "--batch_size", "3", "--format", "jsonl",
                       *_images(cfg)]) == 0
  want = [r.caption for r in ens.caption(_images(cfg), beam_size=3, alpha=1.0)]
  assert [json.loads(l)["caption"] for l in capsys.readouterr().out.splitlines()] == want
  assert evaluate.main([*argv, "--split", "test", "--beam", "3", "--no_meteor", "--batch_size", "4",
                        "--out", str(tmp_path / "e.jsonl")]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bleu4"] >= 0


@pytest.mark.slow
def test_evaluate_and_caption_clis_take_several_checkpoints(trained, tmp_path, capsys):
  from jaxcap import caption, evaluate
  workdir, cfg = trained
  runs = {}
  for n in (1, 2):
    argv = ["--checkpoint", workdir] * n
    assert evaluate.main([*argv, "--split", "test", "--beam", "2", "--no_meteor", "--batch_size", "4",
                          "--out", str(tmp_path / f"{n}.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert caption.main([*argv, "--format", "jsonl", *_images(cfg)]) == 0
    runs[n] = summary, capsys.readouterr().out
  (one, one_captions), (two, two_captions) = runs[1], runs[2]
  assert two["checkpoint"] == f"{one['checkpoint']} + {one['checkpoint']}"
  assert {k: v for k, v in two.items() if k.endswith(("bleu4", "cider"))} == \
      {k: v for k, v in one.items() if k.endswith(("bleu4", "cider"))}
  assert two_captions == one_captions and len(one_captions.splitlines()) == 3


@pytest.mark.slow
def test_app_with_two_checkpoints_shows_both_and_captions(trained, monkeypatch):
  from streamlit.testing.v1 import AppTest
  workdir, cfg = trained
  monkeypatch.setattr("sys.argv", ["serve_app.py", "--checkpoint", workdir, "--checkpoint", workdir])
  at = AppTest.from_file(os.path.join(os.path.dirname(os.path.dirname(__file__)), "serve_app.py"),
                         default_timeout=180)
  at.run()
  assert not at.exception
  assert [t.label for t in at.text_input] == ["checkpoint (a training workdir)", "ensemble member 2"]
  assert at.caption[0].value.count("decoder, step") == 2
  at.file_uploader[0].set_value([("shapes.jpg", open(_images(cfg, 1)[0], "rb").read(), "image/jpeg")]).run()
  assert not at.exception
  assert len([m.value for m in at.markdown if m.value.startswith("**")]) == 1
