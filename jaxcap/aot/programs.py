"""The programs a user runs, built from a config without data or weights: the model's variables, the train
state, the batches and the device feed as shapes, dtypes and shardings over a mesh of (compile-only) devices,
with the trainer's own functions (`train_state.jit_dispatch`, the feeds' `draw`, `decode.greedy` and
`decode.beam_search`), not copies. `jaxcap.aot` lowers and compiles each one for the mesh's platform.

Sizes the data would decide are arguments: the vocabulary, the train images and captions per image (Flickr8k:
2,535 words at the shipped min_count, 6,000 train images, 5 captions each).
"""
from __future__ import annotations

import dataclasses
import copy
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcap import decode, device_feed, evaluator, feeds, objectives, train_state
from jaxcap.data import batching
from jaxcap.feeds.host import HostBatches
from jaxcap.feeds.images import augmented
from jaxcap.feeds.top import cut as top_cut
from jaxcap.models.caption_model import CaptionModel, make_model

CACHE_DTYPE = np.float16  # what `feature_cache` stores the frozen encoder's grids as
REGIMES = ("cached", "finetune", "self_critical", "top")


@dataclasses.dataclass
class Sizes:
  """What the data would decide."""
  vocab: int = 2535
  train_images: int = 6000
  captions_per_image: int = 5
  beam_images: int = 1000
  beam_size: int = 3


@dataclasses.dataclass
class Program:
  name: str
  fn: Callable          # a jitted function
  args: tuple           # abstract positional arguments (jax.ShapeDtypeStruct with shardings)
  kwargs: dict          # keyword arguments, abstract or static
  units: int            # captions or images per train step, or images decoded per call
  unit: str
  # Decoding loops stop when every caption has ended, so XLA's cost analysis counts their body once: their
  # figures are one token step's, and a call runs up to `repeats` of them (train.decode_max_len).
  repeats: int = 1

  def lower(self):
    return self.fn.lower(*self.args, **self.kwargs)


def placed(tree, sharding):
  """Every leaf of `tree` as a jax.ShapeDtypeStruct in `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Build:
  """The model, its abstract train state and the mesh (one `data` axis over `devices`, as the trainer's)."""

  def __init__(self, config, devices, sizes: Sizes, hbm_bytes: int, log=print):
    if not config.train.device_memory_gb:  # the trainer's budget on such a device: half its memory
      config = copy.deepcopy(config)
      config.train.device_memory_gb = hbm_bytes / 2 / 2**30
    self.config, self.sizes, self.log = config, sizes, log
    self.mesh = objectives.data_mesh(devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.model: CaptionModel = make_model(config.model, sizes.vocab)
    if config.train.regime not in REGIMES:
      raise ValueError(f"train.regime={config.train.regime!r}: jaxcap.aot builds the {', '.join(REGIMES)} "
                       f"regimes' programs")
    self.feed_class = feeds.feed_class(config)
    size = self.model.encoder.preprocessing.size
    self.image_shape = (size, size, 3)
    box = {}

    def state():
      variables = dict(self.model.init(train_state.stream(config.seed, train_state.INIT),
                                       jnp.zeros((1,) + self.image_shape, jnp.uint8), jnp.zeros((1, 2), jnp.int32)))
      variables.setdefault("batch_stats", {"encoder": {}})
      box["setup"] = train_state.build(config, self.model, variables, config.train.num_steps or 10_000,
                                       self.feed_class.trainable_for(config))
      images = jnp.zeros((1,) + self.image_shape, jnp.uint8)
      grid = self.model.apply(variables, images, method=CaptionModel.encode)
      trunk = (self.model.apply(variables, images, method=lambda m, x: m.encoder(x, span=(0, self.cut)))
               if self.cut else grid)
      return box["setup"].state, grid, trunk

    # The top regime's trunk: the output of the encoder's layers below its cut.
    self.cut = top_cut(config)[0] if config.train.regime == "top" else 0
    abstract_state, grid, trunk = jax.eval_shape(state)
    self.setup = dataclasses.replace(box["setup"], state=placed(abstract_state, self.replicated))
    self.grid_shape, self.trunk_shape = grid.shape[1:], trunk.shape[1:]
    t = config.train
    self.batch, self.k, self.max_len = t.batch_size, t.steps_per_dispatch, config.data.max_len

  def objective(self):
    """The regime's objective once everything that trains does (fine-tune: after train.finetune_from_step);
    self-critical's reward callback is sharded over this mesh."""
    extra = {"mesh": self.mesh} if self.config.train.regime == "self_critical" else {}
    return list(self.feed_class.step_objectives(self.config, **extra).values())[-1]

  def device_captions(self, row_shape, row_dtype, key: str, per_image: int = 0) -> device_feed.DeviceCaptions:
    """The device feed over train rows of `row_shape` as the trainer would place them on these devices
    (`device_feed.placement`; a device's budget is half its HBM unless train.device_memory_gb says)."""
    s, t = self.sizes, self.config.train
    n_cap = s.train_images * s.captions_per_image
    pairs = batching.CaptionPairs(np.repeat(np.arange(s.train_images, dtype=np.int32), s.captions_per_image),
                                  np.zeros((n_cap, self.max_len), np.int32), np.full(n_cap, self.max_len, np.int32))
    rows = np.broadcast_to(np.zeros((), row_dtype), (s.train_images,) + tuple(row_shape))  # shape only, no memory
    devices = list(self.mesh.devices.flat)
    where = device_feed.placement(self.config, rows.nbytes, pairs, devices, self.log, key + "s")
    if where == "host":
      raise ValueError("the train rows fit no device: the step would be host-fed; raise train.device_memory_gb")
    return device_feed.DeviceCaptions(rows, pairs, self.batch, self.config.seed, t.length_bucketing, self.max_len,
                                      shards=1 if where == "replicate" else len(devices), n_devices=len(devices),
                                      steps_per_dispatch=self.k, key=key, per_image=per_image)

  def train(self) -> Program:
    """The regime's dispatch: K train steps in one call, as the trainer jits it."""
    regime = self.config.train.regime
    if regime == "self_critical":  # host-fed: K stacked batches of images, sharded over the batch axis
      spec = NamedSharding(self.mesh, P(None, "data"))
      args = {"grid": jax.ShapeDtypeStruct((self.k, self.batch) + self.grid_shape, CACHE_DTYPE, sharding=spec),
              "image_index": jax.ShapeDtypeStruct((self.k, self.batch), np.int32, sharding=spec)}
      draw, unit = HostBatches().draw(None, self.mesh), "images"
    else:  # rows on the devices: pixels (finetune), the trunk (top) or grids (cached)
      rows = {"finetune": (self.image_shape, np.uint8, "image"), "top": (self.trunk_shape, CACHE_DTYPE, "trunk")}
      source = self.device_captions(*rows.get(regime, (self.grid_shape, CACHE_DTYPE, "grid")),
                                    per_image=self.config.train.get("captions_per_image", 0))
      args = source.arg_shapes(self.mesh)
      draw = source.draw(self.max_len, self.mesh)
      draw, unit = (augmented(self.config, draw), "images") if regime == "finetune" else (draw, "captions")
    fn = train_state.jit_dispatch(self.setup, self.objective(), draw, self.k)
    # XLA's cost analysis counts the K-step loop's body once: the dispatch's figures are one step's.
    return Program(f"train ({regime}, K={self.k})", fn, (self.setup.state, args), {}, self.batch, unit)

  def _decoder_params(self):
    return self.setup.state["params"]["decoder"]

  def _grids(self, n: int):
    return jax.ShapeDtypeStruct((n,) + self.grid_shape, CACHE_DTYPE, sharding=NamedSharding(self.mesh, P("data")))

  def validate(self) -> Program:
    """Validation's greedy decoding of one batch of train.eval_batch_size grids, each device decoding its rows
    (`evaluator.greedy_per_device`, what the trainer runs)."""
    n = _multiple(self.config.train.eval_batch_size, self.mesh.size)
    max_len = self.config.train.decode_max_len
    fn = evaluator.greedy_per_device(self.model.decoder, max_len, self.mesh)
    return Program("validate (greedy)", fn, (self._decoder_params(), self._grids(n)), {}, n, "images", max_len)

  def beam(self) -> Program:
    """Beam search over `sizes.beam_images` grids (padded to a multiple of the devices) in one call."""
    n = _multiple(self.sizes.beam_images, self.mesh.size)
    return Program(f"beam search (K={self.sizes.beam_size})", decode.beam_search, (),
                   {"decoder": self.model.decoder, "params": self._decoder_params(), "grid": self._grids(n),
                    "beam_size": self.sizes.beam_size,
                    "max_len": self.config.train.decode_max_len}, self.sizes.beam_images, "images",
                   self.config.train.decode_max_len)


def _multiple(n: int, of: int) -> int:
  return -(-n // of) * of


PROGRAMS: dict[str, Callable[[Build], Program]] = {"train": Build.train, "validate": Build.validate,
                                                   "beam": Build.beam}


def build(config, devices, names, sizes: Sizes, hbm_bytes: int, log=print) -> list[Program]:
  b = Build(config, devices, sizes, hbm_bytes, log)
  return [PROGRAMS[n](b) for n in names]

