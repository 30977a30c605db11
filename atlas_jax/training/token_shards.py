"""A token stream over ``.npy`` shards, read window by window from disk (the ``tokens`` data source).

The shards are concatenated in order into one virtual stream; ``stream[a:b]`` reads just those tokens (as int32)
with ``np.fromfile`` at the right byte offsets, so a host holds no more of the corpus than the windows it is
batching, however large the corpus. Nothing stays open: the stream pickles as its file list, so Grain's worker
processes read it too.

Token ids are checked once, when the stream is opened: from ``manifest.json`` where ``experiments.prepare_data``
recorded each shard's id range (and token count), otherwise by reading the shard in blocks.
"""

from __future__ import annotations

import json
import os

import numpy as np

_CHECK_BLOCK = 1 << 24  # tokens read at a time when a shard's id range is not in a manifest


def _header(path: str) -> tuple[int, np.dtype, int]:
  """(token count, dtype, byte offset of the data) from a .npy header, without reading the data."""
  with open(path, "rb") as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    else:
      shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    offset = f.tell()
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f"{path}: token shards must hold integers, got {dtype}.")
  if fortran_order and len(shape) > 1:
    raise ValueError(f"{path}: a multi-dimensional shard must be in C order (it is read as one flat stream).")
  return int(np.prod(shape, dtype=np.int64)), dtype, offset


def _manifest_ranges(directory: str) -> dict[str, tuple[int, int, int]]:
  """{shard file name: (tokens, min id, max id)} from ``directory/manifest.json``, where it records them."""
  path = os.path.join(directory, "manifest.json")
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    shards = json.load(f).get("shards", [])
  return {s["path"]: (s["tokens"], s["min_id"], s["max_id"]) for s in shards if "min_id" in s and "max_id" in s}


class TokenStream:
  """Tokens [start, stop) of the concatenation of `paths` (see the module docstring); ``len`` and ``[a:b]``."""

  def __init__(self, paths, sizes, dtypes, offsets, start: int = 0, stop: int | None = None):
    self.paths, self.sizes, self.dtypes, self.offsets = list(paths), list(sizes), list(dtypes), list(offsets)
    self._ends = np.cumsum(self.sizes, dtype=np.int64)  # shard s holds stream positions [ends[s-1], ends[s])
    total = int(self._ends[-1]) if len(self._ends) else 0
    self.start, self.stop = start, total if stop is None else stop

  def __len__(self) -> int:
    return self.stop - self.start

  def split(self, n_last: int) -> tuple[TokenStream, TokenStream]:
    """(all but the last `n_last` tokens, the last `n_last`)."""
    cut = self.stop - n_last
    fields = (self.paths, self.sizes, self.dtypes, self.offsets)
    return TokenStream(*fields, self.start, cut), TokenStream(*fields, cut, self.stop)

  def __getitem__(self, index: slice) -> np.ndarray:
    if not isinstance(index, slice) or index.step not in (None, 1):
      raise TypeError("a TokenStream is read by contiguous slices, stream[a:b].")
    a, b, _ = index.indices(len(self))
    a, b = self.start + a, self.start + max(a, b)
    out = np.empty(b - a, np.int32)
    s, written = int(np.searchsorted(self._ends, a, side="right")), 0
    while written < len(out):
      shard_start = int(self._ends[s - 1]) if s else 0
      n = min(b, int(self._ends[s])) - a
      itemsize = self.dtypes[s].itemsize
      out[written:written + n] = np.fromfile(self.paths[s], dtype=self.dtypes[s], count=n,
                                             offset=self.offsets[s] + (a - shard_start) * itemsize)
      a, s, written = a + n, s + 1, written + n
    return out


def open_token_shards(paths: list[str], vocab_size: int) -> TokenStream:
  """The stream over `paths` (in order), its token ids checked to lie in [0, vocab_size)."""
  headers = [_header(path) for path in paths]
  stream = TokenStream(paths, [h[0] for h in headers], [h[1] for h in headers], [h[2] for h in headers])
  recorded: dict[str, dict] = {}
  for path, (size, _, _) in zip(paths, headers):
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in recorded:
      recorded[directory] = _manifest_ranges(directory)
    entry = recorded[directory].get(os.path.basename(path))
    if entry is not None and entry[0] == size:
      low, high = entry[1], entry[2]
    else:
      low, high = _id_range(path, size)
    if size and (low < 0 or high >= vocab_size):
      raise ValueError(f"{path}: token ids range over [{low}, {high}], outside [0, {vocab_size}); check the "
                       "tokenizer and the model's vocab_size.")
  return stream


def _id_range(path: str, size: int) -> tuple[int, int]:
  """(min, max) token id of one shard, read in blocks of _CHECK_BLOCK tokens."""
  n, dtype, offset = _header(path)
  low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
  for first in range(0, size, _CHECK_BLOCK):
    block = np.fromfile(path, dtype=dtype, count=min(_CHECK_BLOCK, n - first), offset=offset + first * dtype.itemsize)
    low, high = min(low, int(block.min())), max(high, int(block.max()))
  return low, high
