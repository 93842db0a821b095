"""Caption normalization and the vocabulary: counting, round trips, files."""

import json

import pytest

from jaxcap.data import vocab as V


def test_normalize_drops_case_punctuation_and_non_alphabetic_tokens():
  assert V.normalize("A  dog's Ball , 2 dogs  .") == ["a", "dogs", "ball", "dogs"]
  assert V.normalize("  ") == []
  assert V.normalize("Café t-shirt!") == ["tshirt"]  # non-ASCII word dropped, hyphen removed


def test_build_counts_and_min_count():
  caps = ["a dog runs"] * 5 + ["a cat"] * 4
  v = V.Vocab.build(caps, min_count=5)
  assert v.tokens[:4] == list(V.SPECIALS)
  assert set(v.tokens[4:]) == {"a", "dog", "runs"}  # "cat" seen 4 < 5 times
  assert v.tokens[4] == "a"  # most frequent first


def test_to_ids_to_text_round_trip_and_unknown_words():
  v = V.Vocab.build(["a dog runs on the grass"] * 5)
  text = "A dog runs on the grass ."
  ids = v.to_ids(text)
  assert ids[0] == V.START_ID and ids[-1] == V.END_ID
  assert v.to_text(ids) == "a dog runs on the grass"
  assert v.to_text(v.to_ids("a zebra runs")) == "a <unk> runs"
  assert v.to_text([V.START_ID, 4, V.END_ID, 5, 6]) == v.tokens[4]  # stops at <end>
  assert len(v.to_ids(text, max_len=3)) == 3


def test_save_load_json(tmp_path):
  v = V.Vocab.build(["a b c"] * 5, min_count=2)
  p = str(tmp_path / "vocab.json")
  v.save(p)
  w = V.Vocab.load(p)
  assert w == v and w.min_count == 2
  assert json.load(open(p))["format"] == "jaxcap.vocab/1"


def test_load_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.json"):
    V.Vocab.load(str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{}")
  with pytest.raises(ValueError, match="bad.json.*not a jaxcap vocabulary"):
    V.Vocab.load(str(bad))
