"""Ensembles: one member is the single decoder bit for bit, a model twice is that model, two models score by the
mean of their log-probabilities, and members that differ in vocabulary or encoder are refused at load."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcap import decode
from jaxcap.data import vocab as V
from jaxcap.inference import Captioner, CheckpointError
from jaxcap.models.decoder import Decoder


def model(seed, mode="attend", hidden=16, deep_output=False, vocab_size=14):
  d = Decoder(vocab_size=vocab_size, mode=mode, embed_dim=8, hidden_dim=hidden, attention_dim=8, dropout=0.0,
              deep_output=deep_output)
  grid = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2, 2, 6)), jnp.float32)  # one grid for all members
  v = jax.jit(d.init)(jax.random.key(seed), grid, jnp.zeros((6, 3), jnp.int32))
  params = jax.tree.map(lambda a: a * 3.0, v["params"])  # peakier distributions than the init's
  params["out"]["bias"] = params["out"]["bias"].at[V.END_ID].add(1.0)
  return d, params, grid


def _same_bits(got, want):
  for g, w in zip(got, want):
    assert np.asarray(g).tobytes() == np.asarray(w).tobytes()


def _greedy_by_hand(members, grid, max_len):
  """A plain Python loop: at each step the argmax of the members' mean log-probability (one member: of its
  logits, as greedy always decoded)."""
  states = [d.apply({"params": p}, grid, method=Decoder.init_state) for d, p in members]
  tok, out = jnp.full((grid.shape[0],), V.START_ID), []
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


@pytest.mark.parametrize("mode", ["attend", "show_tell"])
def test_one_member_is_the_single_decoder_bit_for_bit(mode):
  d, p, grid = model(0, mode)
  _same_bits(decode.greedy((d,), (p,), grid, max_len=8), decode.greedy(d, p, grid, max_len=8))
  np.testing.assert_array_equal(np.asarray(decode.greedy(d, p, grid, max_len=8)[0]),
                                _greedy_by_hand([(d, p)], grid, 8))
  for k, alpha in ((2, 0.0), (3, 1.0)):
    _same_bits(decode.beam_search((d,), (p,), grid, k, 8, alpha), decode.beam_search(d, p, grid, k, 8, alpha))


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


def test_two_models_score_every_beam_by_the_mean_of_their_log_probs():
  (a, pa, grid), (b, pb, _) = model(1), model(2, hidden=24, deep_output=True)  # different architectures too
  tokens, scores, log_probs, alphas = (np.asarray(x) for x in decode.beam_search((a, b), (pa, pb), grid, 3, 8, 0.0))
  want = (_caption_log_prob(a, pa, grid, tokens) + _caption_log_prob(b, pb, grid, tokens)) / 2
  np.testing.assert_allclose(log_probs, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scores, log_probs)                       # alpha 0: the score is the log-probability
  np.testing.assert_allclose(alphas[tokens != V.PAD_ID].sum(-1), 1.0, atol=1e-5)  # the members' mean attention
  # The ensemble is a model of its own: its best captions are not just one member's.
  best_a, best_b = (np.asarray(decode.beam_search(d, p, grid, 3, 8, 0.0)[0])[:, 0] for d, p in ((a, pa), (b, pb)))
  assert not np.array_equal(best_a, best_b)
  assert not (np.array_equal(tokens[:, 0], best_a) or np.array_equal(tokens[:, 0], best_b))


def test_two_models_greedy_takes_the_argmax_of_the_mean_log_prob():
  (a, pa, grid), (b, pb, _) = model(1), model(3)
  tokens, _ = decode.greedy((a, b), (pa, pb), grid, max_len=8)
  np.testing.assert_array_equal(np.asarray(tokens), _greedy_by_hand([(a, pa), (b, pb)], grid, 8))


def test_an_attending_and_a_show_tell_member_show_the_attention_of_the_attending_one():
  (a, pa, grid), (b, pb, _) = model(1), model(2, mode="show_tell")
  tokens, alphas = (np.asarray(x) for x in decode.greedy((a, b), (pa, pb), grid, max_len=6))
  assert alphas.shape == (6, 6, 4)
  np.testing.assert_allclose(alphas[tokens != V.PAD_ID].sum(-1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# The Captioner (and through it the CLIs and the app)
# ---------------------------------------------------------------------------------------------------------
def _images(cfg, n=3):
  return [os.path.join(cfg.data.synthetic_dir, "Images", f"synth_{i:05d}.jpg") for i in range(n)]


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


def test_members_with_other_encoder_weights_are_refused(trained):
  cap = Captioner.load(trained[0])
  params = jax.tree.map(lambda x: x, cap.variables["params"])
  params["encoder"] = jax.tree.map(lambda x: x + 1.0, params["encoder"])
  tuned = Captioner(cap.model, {**cap.variables, "params": params}, cap.vocab, cap.config, cap.step, "/runs/tuned")
  with pytest.raises(CheckpointError, match=r"cannot ensemble .* and /runs/tuned: their encoder weights differ"):
    Captioner(cap.model, cap.variables, cap.vocab, cap.config, cap.step, cap.source, [tuned])


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
