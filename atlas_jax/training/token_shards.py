"""A token stream over ``.npy`` shards, read window by window from disk (the ``tokens`` data source).

The shards are concatenated in order into one virtual stream; ``stream[a:b]`` reads just those tokens (as int32)
with ``np.fromfile`` at the right byte offsets, so a host holds no more of the corpus than the windows it is
batching, however large the corpus. Nothing stays open: the stream pickles as its file list, so Grain's worker
processes read it too.

Token ids are checked once, when the stream is opened: from ``manifest.json`` where ``experiments.prepare_data``
recorded each shard's id range (trusted while the shard's token count and byte size match it), otherwise by
reading the shard in blocks. A shard whose size disagrees with its header (cut short) is refused.
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
  count = int(np.prod(shape, dtype=np.int64))
  if os.path.getsize(path) != offset + count * dtype.itemsize:
    raise ValueError(f"{path}: its header promises {count} tokens ({offset + count * dtype.itemsize} bytes) but the "
                     f"file has {os.path.getsize(path)} bytes; it was cut short or appended to.")
  return count, dtype, offset


def _read_manifest(directory: str) -> tuple[dict, dict[str, tuple[int, int, int, int]]]:
  """(``directory/manifest.json`` as written by ``experiments.prepare_data``, {shard file name: (tokens, bytes,
  min id, max id)} of the shards it records), or ({}, {}) where there is none; a manifest that does not parse
  as one is ignored (the shards are then read to check their ids)."""
  path = os.path.join(directory, "manifest.json")
  if not os.path.exists(path):
    return {}, {}
  fields = ("tokens", "bytes", "min_id", "max_id")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
    ranges = {s["path"]: tuple(int(s[k]) for k in fields) for s in manifest.get("shards", [])
              if set(fields) <= set(s)}
    return manifest, ranges
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    print(f"ignoring {path} ({type(e).__name__}: {e}); the shards' token ids are read to check them.", flush=True)
    return {}, {}


def _check_tokenizer(directory: str, manifest: dict, tokenizer: tuple[str, str, str]) -> None:
  """Refuse shards that prepare_data tokenized with another tokenizer than (kind, file, eos token): training
  would run, but the run's checkpoint would name the wrong tokenizer for sampling and evaluation. The file is
  compared by name, so a moved tokenizer file still matches."""
  if "tokenizer" not in manifest:
    return
  kind, path, eos = tokenizer
  saved = (manifest["tokenizer"], os.path.basename(manifest.get("tokenizer_path") or ""),
           manifest.get("eos_token") or "")
  if saved != (kind, os.path.basename(path), eos):
    raise ValueError(f"the shards in {directory} were tokenized with tokenizer {saved[0]!r} (file {saved[1]!r}, "
                     f"eos {saved[2]!r}, by its manifest.json), but data.tokenizer={kind!r}, data.tokenizer_path="
                     f"{path!r}, data.eos_token={eos!r}; set them to match.")


class TokenStream:
  """Tokens [start, stop) of the concatenation of `paths` (see the module docstring); ``len`` and ``[a:b]``."""

  def __init__(self, paths, headers, start: int = 0, stop: int | None = None):
    """headers: each shard's (token count, dtype, data offset), from `_header`."""
    self.paths, self.headers = list(paths), list(headers)
    self._ends = np.cumsum([h[0] for h in self.headers], dtype=np.int64)  # shard s: positions [ends[s-1], ends[s])
    total = int(self._ends[-1]) if len(self._ends) else 0
    self.start, self.stop = start, total if stop is None else stop

  def __len__(self) -> int:
    return self.stop - self.start

  def split(self, n_last: int) -> tuple[TokenStream, TokenStream]:
    """(all but the last `n_last` tokens, the last `n_last`)."""
    cut = self.stop - n_last
    return TokenStream(self.paths, self.headers, self.start, cut), TokenStream(self.paths, self.headers, cut, self.stop)

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
      _, dtype, offset = self.headers[s]
      out[written:written + n] = np.fromfile(self.paths[s], dtype=dtype, count=n,
                                             offset=offset + (a - shard_start) * dtype.itemsize)
      a, s, written = a + n, s + 1, written + n
    return out


def open_token_shards(paths: list[str], vocab_size: int,
                      tokenizer: tuple[str, str, str] | None = None) -> TokenStream:
  """The stream over `paths` (in order), its token ids checked to lie in [0, vocab_size). `tokenizer`: the run's
  (kind, file, eos token), checked against the manifests that name theirs."""
  headers = [_header(path) for path in paths]
  recorded: dict[str, dict] = {}  # directory → its manifest's {shard file name: (tokens, bytes, min, max)}
  ranges, unrecorded = {}, []
  for path, header in zip(paths, headers):
    size = header[0]
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in recorded:
      manifest, recorded[directory] = _read_manifest(directory)
      if tokenizer is not None:
        _check_tokenizer(directory, manifest, tokenizer)
    entry = recorded[directory].get(os.path.basename(path))
    if entry is not None and entry[:2] == (size, os.path.getsize(path)):
      ranges[path] = entry[2:]
    else:
      unrecorded.append((path, header))
  scanned = sum(header[0] for _, header in unrecorded)
  if scanned > _CHECK_BLOCK:
    print(f"checking the token ids of {len(unrecorded)} shards ({scanned:,} tokens) that no manifest.json records "
          "(experiments.prepare_data writes one)…", flush=True)
  ranges.update((path, _id_range(path, *header)) for path, header in unrecorded)
  for path, (size, _, _) in zip(paths, headers):
    low, high = ranges[path]
    if size and (low < 0 or high >= vocab_size):
      raise ValueError(f"{path}: token ids range over [{low}, {high}], outside [0, {vocab_size}); check the "
                       "tokenizer and the model's vocab_size.")
  return TokenStream(paths, headers)


def _id_range(path: str, n: int, dtype: np.dtype, offset: int) -> tuple[int, int]:
  """(min, max) token id of one shard (its header's fields), read in blocks of _CHECK_BLOCK tokens."""
  low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
  for first in range(0, n, _CHECK_BLOCK):
    block = np.fromfile(path, dtype=dtype, count=min(_CHECK_BLOCK, n - first), offset=offset + first * dtype.itemsize)
    low, high = min(low, int(block.min())), max(high, int(block.max()))
  return low, high
