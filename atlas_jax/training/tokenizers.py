"""Tokenizers: byte-level (default, needs no file), SentencePiece, Hugging Face ``tokenizers`` JSON, tiktoken BPE.

Each has ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``vocab_size`` and ``eos_id`` (the document
separator used when packing). The optional backends are imported only when asked for, with a clear error if the
package is missing.
"""

from __future__ import annotations

import importlib
import os


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255; id 256 separates documents (vocab 257 unless vocab_size says more)."""

  def __init__(self, vocab_size: int = 257):
    if vocab_size < 257:
      raise ValueError(f"the byte tokenizer needs vocab_size ≥ 257 (256 bytes + separator); got {vocab_size}.")
    self.vocab_size = vocab_size
    self.eos_id = 256

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def _require(module: str, package: str):
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"this tokenizer needs the `{package}` package: pip install {package}") from e


def _require_file(path: str, what: str) -> None:
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"{what} file not found: {path!r}.")


class SentencePieceTokenizer:
  def __init__(self, path: str):
    _require_file(path, "SentencePiece model")
    spm = _require("sentencepiece", "sentencepiece")
    self._sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size = self._sp.get_piece_size()
    if self._sp.eos_id() < 0:
      raise ValueError(f"{path}: this SentencePiece model has no end-of-sequence piece, which separates packed "
                       "documents; train it with one (eos_id ≥ 0).")
    self.eos_id = self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])


class HuggingFaceTokenizer:
  def __init__(self, path: str, eos_token: str | None = None):
    _require_file(path, "tokenizers JSON")
    tokenizers = _require("tokenizers", "tokenizers")
    self._tok = tokenizers.Tokenizer.from_file(path)
    self.vocab_size = self._tok.get_vocab_size()
    candidates = [eos_token] if eos_token else ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]"]
    ids = [self._tok.token_to_id(t) for t in candidates if t and self._tok.token_to_id(t) is not None]
    if not ids:
      raise ValueError(f"{path}: the tokenizer has none of the end-of-text tokens {candidates}, which separate "
                       "packed documents; name it with eos_token (data.eos_token, prepare_data --eos_token).")
    self.eos_id = ids[0]

  def encode(self, text: str) -> list[int]:
    # Documents are separated by eos_id when packed; the tokenizer's own BOS/CLS-style additions would add
    # tokens no other tokenizer here adds.
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids])


# GPT-2's pre-tokenisation pattern, for tiktoken BPE files of that family.
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TiktokenTokenizer:
  def __init__(self, path: str):
    _require_file(path, "tiktoken BPE")
    tiktoken = _require("tiktoken", "tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(path)
    self.eos_id = len(ranks)
    self._enc = tiktoken.Encoding(name=os.path.basename(path), pat_str=_GPT2_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={"<|endoftext|>": self.eos_id})
    self.vocab_size = self._enc.n_vocab

  def encode(self, text: str) -> list[int]:
    return self._enc.encode_ordinary(text)

  def decode(self, ids) -> str:
    return self._enc.decode([int(i) for i in ids])


def make_tokenizer(kind: str, path: str = "", vocab_size: int = 257, eos_token: str = ""):
  """kind: ``byte`` | ``sentencepiece`` | ``huggingface`` | ``tiktoken``; eos_token names the document separator
  of a ``huggingface`` tokenizer (default: the first of </s>, <|endoftext|>, <|end_of_text|>, <eos>, [SEP])."""
  if eos_token and kind != "huggingface":
    raise ValueError(f"eos_token={eos_token!r} applies to the huggingface tokenizer only, not {kind!r}.")
  if kind == "byte":
    return ByteTokenizer(vocab_size)
  if kind == "sentencepiece":
    return SentencePieceTokenizer(path)
  if kind == "huggingface":
    return HuggingFaceTokenizer(path, eos_token or None)
  if kind == "tiktoken":
    return TiktokenTokenizer(path)
  raise ValueError(f"unknown tokenizer {kind!r}; expected byte, sentencepiece, huggingface or tiktoken.")
