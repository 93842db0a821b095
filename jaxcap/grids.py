"""What the evaluator decodes for a split, and the helpers over its grids.

A split's inputs are one feature grid per image ([N, h, w, C], or `feature_cache.FeatureRows` read batch by
batch), or, for an ensemble whose members use several encoders, a tuple of them, one per member. The feature
store writes these, the feeds and the `Captioner` make them, and the evaluator decodes them.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np


@dataclasses.dataclass
class SplitInputs:
  """What the evaluator decodes for a split: one feature grid per image, with its names and references."""
  names: list[str]
  grids: np.ndarray | tuple          # [N, h, w, C] (or feature_cache.FeatureRows: read batch by batch); an
                                     # ensemble on several encoders: a tuple, one per member
  references: list[list[str]]        # raw reference captions per image ([] when there are none)


def map_grids(fn: Callable, *grids):
  """jax.tree.map over grids (an array, or a tuple of them: one per ensemble member) that calls fn once for
  slots holding the same objects, so members sharing an encoder keep sharing one array (not a copy each)."""
  out, done = [], {}
  for xs in zip(*(jax.tree.leaves(g) for g in grids)):
    key = tuple(map(id, xs))
    if key not in done:
      done[key] = fn(*xs)
    out.append(done[key])
  return jax.tree.unflatten(jax.tree.structure(grids[0]), out)


def rows(grids) -> int:
  """Images in grids: an array [N, h, w, C] (or FeatureRows), or a tuple of them (one per ensemble member)."""
  return len(jax.tree.leaves(grids)[0])
