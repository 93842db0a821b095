"""Frozen-encoder feature cache: every image of a split encoded once, stored on disk as float16; read back
row by row, so it need not fit in memory. The same store holds a split's decoded pixels (`decode`: uint8
[N, S, S, 3], the images the tf.data pipeline would feed, decoded and resized once), for the fine-tune feed that
does no per-epoch decode (`feeds.images.DecodedImages`).

Layout: <cache_dir>/<split>.npy [N, h, w, C] float16 (pixels: uint8) and <split>.json (file names, in row
order), a standard .npy (`np.load(path, mmap_mode="r")` maps it). Files are written under a temporary name (per
process) and renamed when complete, so a crash never leaves a half cache that looks whole; a file whose size
does not match its header (damaged afterwards) is a one-line `DataError` naming it. The cache directory name
hashes everything the features depend on (dataset, encoder, weights file, pixels, size); `directory` and
`pixels_directory` are the one place that key is made. The same store holds an encoder's trunk (the output of its
layers below a cut, `extract(stop=...)`), for the feed that trains only the top (`feeds.top`).

Reading: `load` gives a `FeatureRows`, which reads the rows it is indexed with (`os.pread`, no mmap) and nothing
else: host memory holds what was asked for, whatever the file's size (COCO train: 113,287 grids, 14 GB).
`FeatureRows.load()` reads it whole. Writing goes through `RowWriter` (`os.pwrite` of each batch: no mapping of
the whole file whose dirty pages would count in the writer's memory).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import weakref
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxcap import fileio
from jaxcap import paths, pretrained
from jaxcap.data import DataError, pipeline
from jaxcap.grids import SplitInputs, map_grids
from jaxcap.models import layers


def directory(root: str, dataset_dir: str, encoder_name: str, weights_file: str | None, seed: int,
              size: int, compute: str = "float32", part: str = "") -> str:
  """The cache folder for features of `dataset_dir` by this encoder with these weights (random init: the seed)
  at input `size`, computed as `compute` says (the dtype and kernels that change the features' bits), under
  `root` ("" = <cache root>/features); `part` names what is cached when it is not the grid (a trunk)."""
  root = root or os.path.join(paths.cache_root(), "features")
  weights_id = (os.path.basename(weights_file) + str(os.path.getmtime(weights_file)) if weights_file
                else f"random-seed{seed}")
  weights_id += f"|pixels{pipeline.PIXELS_VERSION}"
  key = f"{os.path.abspath(dataset_dir)}|{encoder_name}|{weights_id}|{size}|{compute}" + (f"|{part}" if part else "")
  name = f"{encoder_name}-{size}" + (f"-{part.split('|')[0]}" if part.startswith("trunk") else "")
  return os.path.join(root, f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}")


def directory_for(config, builder, size: int, variables: dict | None = None, trunk: int = 0) -> str:
  """Where a config's frozen-encoder grids are cached: keyed by the prepared dataset (an adapter's cache_id),
  the encoder, its weights file (`model.pretrained`; "default": the encoder's converted weights), input size,
  and how it computes: `model.dtype`, and for EfficientNets the depthwise kernels `model.depthwise_impl`
  resolves to on this backend (each gives other bits: a bf16 run never reads an f32 run's grids).
  `variables`: the encoder variables the cache is computed with, keyed by a digest of them (weights from
  `train.init_from` whose encoder was adapted are not the file's). `trunk` > 0: where the output of the
  encoder's layers below `trunk` is cached instead (`variables`: those layers')."""
  compute = config.model.dtype
  if config.model.encoder.startswith("efficientnet"):
    compute += "|depthwise=" + layers.resolve_depthwise_impl(config.model.get("depthwise_impl", "auto"))
  part = f"trunk{trunk}" if trunk else ""
  if variables is not None:
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(variables):
      digest.update(np.ascontiguousarray(leaf).tobytes())
    part += f"|weights={digest.hexdigest()}"
  return directory(config.data.feature_cache_dir, getattr(builder, "cache_id", builder.data_dir),
                   config.model.encoder, pretrained.weights_path(config) or None, config.seed, size, compute, part)


def encoder_variables(variables: dict) -> dict:
  """{params, batch_stats} of the encoder, from a model's variables ({params: {encoder, decoder}, ...})."""
  return {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"].get("encoder", {})}


def pixels_directory(root: str, dataset_dir: str, size: int) -> str:
  """The cache folder for the decoded uint8 pixels of `dataset_dir` at `size` (next to its features)."""
  root = root or os.path.join(paths.cache_root(), "features")
  key = f"{os.path.abspath(dataset_dir)}|pixels{pipeline.PIXELS_VERSION}|{size}"
  return os.path.join(root, f"pixels-{size}-{hashlib.sha1(key.encode()).hexdigest()[:12]}")


class _File:
  """An open file descriptor shared by a `FeatureRows` and its views (closed with the last of them)."""

  def __init__(self, path: str):
    self.path, self.fd = path, os.open(path, os.O_RDONLY)
    weakref.finalize(self, os.close, self.fd)


def _header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
  """(shape, dtype, data offset) of a C-ordered .npy file whose size matches its header; else a `DataError`."""
  fix = f"delete {os.path.dirname(path) or '.'} to rebuild it"
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
      shape, fortran, dtype = read(f)
    except (ValueError, EOFError) as e:
      raise DataError(f"{path}: damaged cache file (unreadable .npy header: {e}); {fix}") from None
    if fortran:
      raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
    offset, size = f.tell(), os.fstat(f.fileno()).st_size
  need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if size != need:
    raise DataError(f"{path}: damaged cache file ({size} bytes; its header says {tuple(shape)} {dtype} = "
                    f"{need} bytes); {fix}")
  return shape, dtype, offset


def _pread_into(fd: int, buf: np.ndarray, pos: int) -> None:
  view = memoryview(buf).cast("B")
  while view.nbytes:
    n = os.preadv(fd, [view], pos)
    if n <= 0:
      raise OSError(f"short read at byte {pos}")
    view, pos = view[n:], pos + n


class FeatureRows:
  """Rows [start, stop) of an on-disk [N, ...] .npy, read on demand.

  `rows[i]`, `rows[index_array]` read those rows into a new array (duplicates and any order allowed; sorted,
  consecutive rows coalesced into one read); `rows[a:b]` is a view (nothing read); `np.asarray(rows)` or
  `rows.load()` reads them all. Reads go through the OS page cache, which is not this process's memory.
  """

  def __init__(self, path: str, start: int = 0, stop: int | None = None, _file: _File | None = None):
    shape, self.dtype, self._offset = _header(path)
    self.path, self._file = path, _file or _File(path)
    self._row_shape = tuple(shape[1:])
    self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize
    self._start, self._stop = start, shape[0] if stop is None else stop

  @property
  def shape(self) -> tuple[int, ...]:
    return (self._stop - self._start,) + self._row_shape

  @property
  def ndim(self) -> int:
    return 1 + len(self._row_shape)

  @property
  def nbytes(self) -> int:
    return len(self) * self._row_bytes

  def __len__(self) -> int:
    return self._stop - self._start

  def __getitem__(self, key):
    if isinstance(key, slice):
      start, stop, step = key.indices(len(self))
      if step != 1:
        return self.read(np.arange(start, stop, step))
      return FeatureRows(self.path, self._start + start, self._start + max(start, stop), self._file)
    if isinstance(key, (int, np.integer)):
      return self.read(np.asarray([key]))[0]
    return self.read(np.asarray(key))

  def read(self, rows: np.ndarray) -> np.ndarray:
    """[len(rows), ...] the rows at these indices (relative to this view), read straight into the result: each
    distinct row once (runs of consecutive rows landing side by side in one read), repeats copied."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    rows = np.where(rows < 0, rows + len(self), rows)
    if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
      raise IndexError(f"{self.path}: row index out of range [0, {len(self)})")
    out = np.empty((len(rows),) + self._row_shape, self.dtype)
    if not rows.size:
      return out
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    first = np.ones(len(srt), bool)
    first[1:] = srt[1:] != srt[:-1]
    pos, uniq = order[first], srt[first]  # where each distinct row goes, and which row it is (ascending)
    cut = np.flatnonzero((np.diff(uniq) != 1) | (np.diff(pos) != 1)) + 1
    for a, b in zip(np.r_[0, cut], np.r_[cut, len(uniq)]):
      offset = self._offset + (self._start + int(uniq[a])) * self._row_bytes
      _pread_into(self._file.fd, out[pos[a]:pos[a] + b - a], offset)
    if len(pos) < len(rows):  # repeats: copy from the first occurrence
      src = pos[np.cumsum(first) - 1]
      out[order[~first]] = out[src[~first]]
    return out

  def load(self) -> np.ndarray:
    """Every row of this view, in host memory."""
    out = np.empty(self.shape, self.dtype)
    _pread_into(self._file.fd, out, self._offset + self._start * self._row_bytes)
    return out

  def __array__(self, dtype=None, copy=None):
    out = self.load()
    return out if dtype is None else out.astype(dtype)


class RowWriter:
  """Writes an [n, *row_shape] .npy batch by batch with pwrite (the header first, as np.load expects)."""

  def __init__(self, path: str, n: int, row_shape: tuple[int, ...], dtype=np.float16):
    # open_memmap writes the .npy header and sizes the file (sparse); nothing of the data is mapped in after.
    m = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n,) + tuple(row_shape))
    self._offset, self.n, self.count = m.offset, n, 0
    self.dtype, self.row_shape = np.dtype(dtype), tuple(row_shape)
    self._row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
    del m
    self._fd = os.open(path, os.O_WRONLY)

  def write(self, rows: np.ndarray) -> None:
    rows = np.ascontiguousarray(rows, self.dtype)
    if rows.shape[1:] != self.row_shape or self.count + len(rows) > self.n:
      raise ValueError(f"rows {rows.shape} do not fit [{self.n}, {self.row_shape}] after {self.count} rows")
    view, pos = memoryview(rows).cast("B"), self._offset + self.count * self._row_bytes
    while view.nbytes:
      k = os.pwrite(self._fd, view, pos)
      view, pos = view[k:], pos + k
    self.count += len(rows)

  def close(self) -> None:
    os.close(self._fd)
    if self.count != self.n:
      raise ValueError(f"{self.count} rows written, {self.n} expected")


def load(directory: str, split: str) -> tuple[list[str], FeatureRows] | None:
  """(file names, the split's grids on disk), or None when the split is not cached yet."""
  npy, names = os.path.join(directory, f"{split}.npy"), os.path.join(directory, f"{split}.json")
  if not (os.path.exists(npy) and os.path.exists(names)):
    return None
  with open(names) as f:
    return json.load(f), FeatureRows(npy)


def encode_batches(builder, split: str, encode: Callable, preprocessing, batch_size: int,
                   limit: int = 0) -> Iterator[tuple[list[str], np.ndarray, list[list[str]]]]:
  """(names, grids, references) of each eval batch of `split` (its valid rows; the first `limit` images),
  grids = encode(uint8 images [batch_size, S, S, 3]) as numpy (a tuple of them when encode returns a tuple:
  an ensemble on several encoders)."""
  seen = 0
  for batch in pipeline.eval_batches(builder, split=split, batch_size=batch_size, preprocessing=preprocessing):
    k = int(batch["valid"].sum())
    if limit:
      k = min(k, limit - seen)
    grids = map_grids(lambda g: np.asarray(g)[:k], encode(batch["image"]))  # noqa: B023
    yield [f.decode() for f in batch["filename"][:k]], grids, pipeline.references(batch)[:k]
    seen += k
    if limit and seen >= limit:
      return


def encode_split(encode: Callable, builder, split: str, preprocessing, batch_size: int, limit: int = 0,
                 progress: bool = False) -> SplitInputs:
  """Every image of `split` (the first `limit`) through the eval pipeline and `encode(images)`, kept in memory
  (not cached: the encoder may be training)."""
  n = builder.info.splits[split].num_examples
  names, grids, refs = [], [], []
  bar = tqdm(total=min(n, limit or n), desc=f"encode {split}", unit="img", disable=not progress)
  for batch_names, g, r in encode_batches(builder, split, encode, preprocessing, batch_size, limit):
    names += batch_names
    grids.append(g)
    refs += r
    bar.update(len(batch_names))
  bar.close()
  return SplitInputs(names, map_grids(lambda *gs: np.concatenate(gs), *grids), refs)


def extract(builder, split: str, encoder, variables, directory: str, batch_size: int = 32,
            verbose: bool = True, stop: int = 0) -> tuple[list[str], FeatureRows]:
  """Encodes every image of `split` (cached after the first call); the grids stay on disk. `stop` > 0: the
  output of the encoder's layers below `stop` (its trunk) instead of the grid."""
  if stop:
    encode = jax.jit(lambda v, x: encoder.apply(v, x, span=(0, stop)).astype(jnp.float16))
  else:
    encode = jax.jit(lambda v, x: encoder.apply(v, x)[0].astype(jnp.float16))
  return _cached(builder, split, lambda x: encode(variables, x), encoder.preprocessing, directory, batch_size,
                 np.float16, "trunk" if stop else "features", verbose)


def decode(builder, split: str, preprocessing, directory: str, batch_size: int = 64,
           verbose: bool = True) -> tuple[list[str], FeatureRows]:
  """Every image of `split` decoded and resized to `preprocessing.size` by the tf.data pipeline (the pixels a
  train batch holds), uint8 [N, S, S, 3], written once (cached after the first call); the pixels stay on disk."""
  return _cached(builder, split, lambda x: x, preprocessing, directory, batch_size, np.uint8, "pixels", verbose)


def _cached(builder, split: str, encode: Callable, preprocessing, directory: str, batch_size: int, dtype,
            what: str, verbose: bool) -> tuple[list[str], FeatureRows]:
  """(names, rows) of encode(every image of `split`) from `directory`, written there first if not yet."""
  cached = load(directory, split)
  if cached is not None:
    return cached
  os.makedirs(directory, exist_ok=True)
  with _exclusive(directory, f"the {what} of {split}", verbose):
    return load(directory, split) or _write(builder, split, encode, preprocessing, directory, batch_size, dtype,
                                            what, verbose)


@contextlib.contextmanager
def _exclusive(directory: str, what: str, verbose: bool):
  """Holds a lock on the cache folder itself (flock, released when the process dies): processes sharing a
  cache (two trainers, the hosts of one job) write a split once, and the others wait, then read it."""
  fd = os.open(directory, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if verbose:
        print(f"waiting for another process writing {what} into {directory}", file=sys.stderr, flush=True)
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)


def _write(builder, split: str, encode: Callable, preprocessing, directory: str, batch_size: int, dtype,
           what: str, verbose: bool) -> tuple[list[str], FeatureRows]:
  n = builder.info.splits[split].num_examples
  names, out = [], None
  bar = tqdm(total=n, desc=f"{what} {split}", unit="img", disable=not verbose)
  try:
    files = [os.path.join(directory, f"{split}{ext}") for ext in (".npy", ".json")]
    with fileio.atomic_paths(*files) as (tmp, tmp_names):
      for batch_names, grid, _ in encode_batches(builder, split, encode, preprocessing, batch_size):
        if out is None:
          out = RowWriter(tmp, n, grid.shape[1:], dtype)
        out.write(grid)
        names += batch_names
        bar.update(len(grid))
      bar.close()
      assert out is not None and len(names) == n, (len(names), n)
      out.close()
      with open(tmp_names, "w") as f:
        json.dump(names, f)
  except OSError as e:
    cause, fix = paths.io_cause(e) or (e.strerror or str(e), "fix it")
    raise DataError(f"{directory}: cannot write the {dict(features='feature', pixels='pixel').get(what, what)} cache "
                    f"({cause}); {fix} and rerun (nothing half-written is kept)") from None
  return load(directory, split)
