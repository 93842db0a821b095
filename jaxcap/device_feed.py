"""Train data resident on the devices: a row per train image (the cached regime's grids, or the fine-tune
feed's decoded uint8 pixels), caption tokens and the image row of each caption are put on the devices once, and
every step gathers its batch there by index, so the host gathers and copies nothing per step (64 grids of
7x7x1280 are 8 MB a step at batch 64; 64 images of 224x224x3, 9.6 MB; at a GPU's batch of 1024, 16x that).

Layout (`placement` picks it and logs it with the sizes):
  - "replicate": every device holds all of it. The batches are exactly the host feed's (`batching.Schedule` with
    the same seed), so a run can switch between the two and resume exactly.
  - "shard": the images are split over the data axis (device d holds images [d*n, (d+1)*n)) with their
    captions, and device d draws its B/D rows of every batch from its own shard (each shard has its own
    `Schedule`, seeded (seed, d)). The data order is a different one from the host feed's; each process reads
    and holds only its devices' shards.
Both are one shape: data arrays whose leading axis is split over S shards (S = 1 or D) and a table
[steps, B] of caption indices (global for S = 1, shard-local for S = D); device d takes its B/D columns.

The order stays a pure function of the step: the table of an epoch (indices only, steps x B x 4 bytes) is made
on the host from (seed, epoch) and uploaded once per epoch, and the step reads its row from the train state's
step counter, which lives on the device.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcap import memory, train_state
from jaxcap.data import batching
from jaxcap.data import vocab as vocab_lib


def placement(config, row_bytes: int, pairs: batching.CaptionPairs, devices, log=print,
              row_kind: str = "rows") -> str:
  """"replicate", "shard" or "host", by `train.feed_placement` and what fits a device (logged with the sizes of
  the train rows, `row_bytes` of `row_kind`: "grids" or "images"); "device" that fits nowhere is a one-line error
  pointing to the host feed."""
  t, n_dev = config.train, len(devices)
  want = t.feed_placement
  caption_bytes = pairs.tokens.nbytes + pairs.image_index.nbytes
  table_bytes = (len(pairs.lengths) // t.batch_size + t.steps_per_dispatch) * t.batch_size * 4
  whole = row_bytes + caption_bytes + table_bytes
  shard = math.ceil(row_bytes / n_dev * 1.05) + math.ceil((caption_bytes + table_bytes) / n_dev * 1.2)  # uneven
  budget = memory.device_budget(config, devices)
  gb = lambda b: memory.gb(b, 3)  # noqa: E731
  sizes = (f"train {row_kind} {gb(row_bytes)} + captions {gb(caption_bytes)} + index table {gb(table_bytes)}: "
           f"{gb(whole)} per device replicated, ~{gb(shard)} sharded over {n_dev}; budget {gb(budget)} per device")
  if want == "host":
    choice = "host"
  elif whole <= budget:
    choice = "replicate"
  elif shard <= budget and n_dev > 1:
    choice = "shard"
  elif want == "device":
    raise train_state.TrainError(f"train.feed_placement=device: the train data fits no device ({sizes}); use "
                                 f"train.feed_placement=host (or auto), or raise train.device_memory_gb")
  else:
    choice = "host"
  where = {"host": "on the host (batches gathered and copied every step)", "replicate": "on the devices, replicated",
           "shard": f"on the devices, sharded over {n_dev}"}[choice]
  log(f"train feed: {where}; {sizes}; train.feed_placement={want}")
  return choice


class DeviceCaptions:
  """The device-resident train data and its batches (see the module docstring): `rows` [N, ...] holds a row per
  train image, drawn into the batch as `key` ("grid": cached features, "image": pixels, "trunk": the encoder's
  trunk); `per_image` > 0: image-major batches (`batching.ImageMajorSchedule`)."""

  def __init__(self, rows, pairs: batching.CaptionPairs, batch_size: int, seed: int, bucket: bool, max_len: int,
               shards: int, n_devices: int, steps_per_dispatch: int, key: str = "grid", per_image: int = 0):
    if batch_size % n_devices or (per_image and batch_size // n_devices % per_image):
      raise ValueError(f"batch {batch_size} does not split over {n_devices} devices"
                       + (f" in whole images of {per_image} captions" if per_image else ""))
    self.rows, self.max_len, self.k, self.batch_size = rows, max_len, steps_per_dispatch, batch_size
    self.key = key
    self.shards, self.per_device = shards, batch_size // n_devices
    n_img = len(rows)
    self.shard_images = -(-n_img // shards)
    # Caption ids (rows of `pairs`) of each shard, and each shard's schedule over them.
    owner = pairs.image_index // self.shard_images
    self.caption_ids = [np.flatnonzero(owner == s) for s in range(shards)]
    per_shard = batch_size // shards
    if shards == 1:
      self.schedules = [batching.make_schedule(pairs, batch_size, seed, bucket, per_image)]
    else:
      self.schedules = [batching.make_schedule(pairs, per_shard, (seed, s), bucket, per_image, rows=ids)
                        for s, ids in enumerate(self.caption_ids)]
    self.steps_per_epoch = min(s.steps_per_epoch for s in self.schedules)
    self.pairs, self.lengths = pairs, pairs.lengths
    self.shard_captions = max(len(ids) for ids in self.caption_ids)
    self._data, self._table = None, None

  # -- host side: indices only --------------------------------------------------------------------------------
  def table(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(device table [rows, B] int32, the padded length of each row [rows]) for steps epoch*spe .. the epoch's
    end + K - 1 (a dispatch that starts in this epoch may run K - 1 steps into the next)."""
    spe = self.steps_per_epoch
    rows_local, rows_global = [], []
    for step in range(epoch * spe, (epoch + 1) * spe + self.k - 1):
      e, i = divmod(step, spe)
      local = [sched.epoch(e)[i] for sched in self.schedules]  # each shard's rows of this step
      rows_local.append(np.concatenate(local))
      rows_global.append(np.concatenate([ids[r] for ids, r in zip(self.caption_ids, local)]
                                        if self.shards > 1 else local))
    local, glob = np.stack(rows_local).astype(np.int32), np.stack(rows_global)
    return local, batching.cut_length(self.lengths[glob].max(1), self.schedules[0].pad_multiple, self.max_len)

  def _shard_rows(self, array, shard_size: int, ids=None):
    """A callback for `jax.make_array_from_callback`: the rows of the shards a device holds (zeros past the
    end), read only when asked for, so a process holds only its devices' shards."""
    cache = {}

    def rows(index):
      sl = index[0]
      lo, hi = sl.start or 0, sl.stop if sl.stop is not None else shard_size * self.shards
      if (lo, hi) not in cache:
        parts = []
        for s in range(lo // shard_size, -(-hi // shard_size)):
          if ids is None:  # image rows: a contiguous block of images
            a, b = s * shard_size, min((s + 1) * shard_size, len(array))
            part = np.asarray(array[a:b]) if b > a else np.zeros((0,) + array.shape[1:], array.dtype)
          else:
            part = array[ids[s]]
          parts.append(batching.pad_rows(part, shard_size))
        cache[(lo, hi)] = np.concatenate(parts)
      return cache[(lo, hi)]

    return rows

  def _layout(self) -> list[tuple]:
    """(host array, rows per shard, caption ids per shard or None) of each resident array: the images' rows,
    the caption tokens and each caption's image row within its shard."""
    image_row = self.pairs.image_index % self.shard_images  # the row within its shard
    out = []
    for array, size, ids in ((self.rows, self.shard_images, None),
                             (self.pairs.tokens, self.shard_captions, self.caption_ids),
                             (image_row.astype(np.int32), self.shard_captions, self.caption_ids)):
      if self.shards == 1:
        ids = None if ids is None else [np.arange(len(array))]
      out.append((array, size, ids))
    return out

  def arg_shapes(self, mesh) -> dict:
    """The abstract `dispatches` args (shapes, dtypes and shardings; no data): what `jaxcap.aot` compiles the
    trainer's dispatch for."""
    spec = P() if self.shards == 1 else P("data")
    data = tuple(jax.ShapeDtypeStruct((size * self.shards,) + tuple(array.shape[1:]), array.dtype,
                                      sharding=NamedSharding(mesh, spec)) for array, size, _ in self._layout())
    rows = self.steps_per_epoch + self.k - 1
    table = {"rows": jax.ShapeDtypeStruct((rows, self.batch_size), np.int32,
                                          sharding=NamedSharding(mesh, P() if self.shards == 1 else P(None, "data"))),
             "first": jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(mesh, P()))}
    return {"data": data, "table": table}

  def _place(self, mesh) -> tuple:
    sharding = NamedSharding(mesh, P() if self.shards == 1 else P("data"))
    arrays = []
    for array, size, ids in self._layout():
      shape = (size * self.shards,) + tuple(array.shape[1:])
      arrays.append(jax.make_array_from_callback(shape, sharding, self._shard_rows(array, size, ids)))
    return tuple(arrays)

  # -- the loop's side --------------------------------------------------------------------------------------------
  def dispatches(self, chunks, mesh):
    """(static, args) per dispatch: static = the padded caption length of its batches; args = the resident data,
    the epoch's table and the step its first row belongs to (device arrays; a new table once per epoch)."""
    if self._data is None:
      self._data = self._place(mesh)
    table_sharding = NamedSharding(mesh, P() if self.shards == 1 else P(None, "data"))
    replicated = NamedSharding(mesh, P())
    epoch, lengths, table = None, None, None
    for first, n in chunks:
      e = first // self.steps_per_epoch
      if e != epoch:
        with jax.transfer_guard_host_to_device("allow"):  # once per epoch: indices, not data
          host, lengths = self.table(e)
          table = {"rows": jax.make_array_from_callback(host.shape, table_sharding, lambda i: host[i]),
                   "first": jax.device_put(np.int32(e * self.steps_per_epoch), replicated)}
        epoch = e
      i = first - e * self.steps_per_epoch
      yield int(lengths[i:i + n].max()), {"data": self._data, "table": table}

  def draw(self, length: int, mesh):
    """draw(args, i, step) -> the batch of the train step `step` (traced): each device gathers its B/D rows from
    the data it holds."""
    per = self.per_device

    def local(rows, tokens, image_row, table, first, step):
      width = table.shape[1]                         # B (replicated) or B/D (sharded: this shard's columns)
      offset = (jax.lax.axis_index("data") % (width // per)) * per
      ids = jax.lax.dynamic_slice(jax.lax.dynamic_index_in_dim(table, step - first, keepdims=False), (offset,),
                                  (per,))
      toks = tokens[ids, :length]
      return {self.key: rows[image_row[ids]], "tokens": toks, "mask": (toks != vocab_lib.PAD_ID).astype(jnp.float32)}

    spec = P() if self.shards == 1 else P("data")
    gather = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P() if self.shards == 1 else P(None, "data"),
                                                       P(), P()), out_specs=P("data"), check_vma=False)

    def draw(args, i, step):
      rows, tokens, image_row = args["data"]
      return gather(rows, tokens, image_row, args["table"]["rows"], args["table"]["first"], step)

    return draw
