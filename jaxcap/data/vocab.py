"""Caption normalization and the word vocabulary.

Normalization (the same in Python and in the tf.data graph, tested to agree):
lowercase -> delete ASCII punctuation -> split on whitespace -> keep tokens made only of a-z.
So "A dog's ball ." -> ["a", "dogs", "ball"]; numbers and non-ASCII words are dropped.
"""
from __future__ import annotations

import collections
import json
import re
import string
from typing import Iterable, Sequence

from jaxcap import fileio

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_WORD = re.compile(r"[a-z]+")
# The same rules for tf.strings (RE2 syntax); kept beside the Python ones so they change together.
TF_PUNCT_PATTERN = "[" + re.escape(string.punctuation) + "]"
TF_WORD_PATTERN = "[a-z]+"


def normalize(caption: str) -> list[str]:
  """Tokens of a raw caption, as the vocabulary and BLEU see them."""
  words = caption.lower().translate(_PUNCT_TABLE).split()
  return [w for w in words if _WORD.fullmatch(w)]


class Vocab:
  """Token <-> id mapping; ids 0..3 are <pad> <start> <end> <unk>."""

  def __init__(self, tokens: Sequence[str], min_count: int = 5):
    if tuple(tokens[:4]) != SPECIALS:
      raise ValueError(f"vocabulary must start with {SPECIALS}, got {tuple(tokens[:4])}")
    self.tokens = list(tokens)
    self.min_count = min_count
    self._ids = {t: i for i, t in enumerate(self.tokens)}
    if len(self._ids) != len(self.tokens):
      raise ValueError("vocabulary has duplicate tokens")

  @classmethod
  def build(cls, captions: Iterable[str], min_count: int = 5) -> "Vocab":
    """Words seen at least `min_count` times, most frequent first (ties alphabetical)."""
    counts = collections.Counter(w for c in captions for w in normalize(c))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return cls(list(SPECIALS) + words, min_count=min_count)

  def __len__(self) -> int:
    return len(self.tokens)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocab) and self.tokens == other.tokens

  def to_ids(self, caption: str, max_len: int | None = None) -> list[int]:
    """Ids of a raw caption: <start> w1 .. wn <end>, unknown words as <unk>; cut to max_len ids (the <end> is
    dropped by a cut, as in training)."""
    ids = [START_ID] + [self._ids.get(w, UNK_ID) for w in normalize(caption)] + [END_ID]
    return ids[:max_len] if max_len else ids

  def to_text(self, ids: Iterable[int]) -> str:
    """Ids -> text: the words up to the first <end>, joined by spaces; <pad> and <start> are skipped."""
    words = []
    for i in ids:
      i = int(i)
      if i == END_ID:
        break
      if i in (PAD_ID, START_ID):
        continue
      words.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
    return " ".join(words)

  def to_json(self) -> str:
    return json.dumps({"format": "jaxcap.vocab/1", "min_count": self.min_count, "tokens": self.tokens})

  def save(self, path: str) -> None:
    fileio.write_atomic(path, self.to_json())

  @classmethod
  def load(cls, path: str) -> "Vocab":
    try:
      with open(path) as f:
        d = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(f"{path}: vocabulary file not found") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not a vocabulary JSON file ({e})") from None
    if not isinstance(d, dict) or d.get("format") != "jaxcap.vocab/1":
      raise ValueError(f"{path}: not a jaxcap vocabulary (missing format 'jaxcap.vocab/1')")
    return cls(d["tokens"], min_count=d.get("min_count", 5))
