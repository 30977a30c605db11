"""Test doubles shared by the evaluation tests."""

from __future__ import annotations

import re


class WordTokenizer:
  """A lossless fake word-level tokenizer: each token is a run of whitespace plus the next word."""

  _pattern = re.compile(r"\s*\S+|\s+")

  def __init__(self):
    self._ids: dict[str, int] = {}
    self._pieces: list[str] = []

  def encode(self, text: str) -> list[int]:
    out = []
    for piece in self._pattern.findall(text):
      if piece not in self._ids:
        self._ids[piece] = len(self._pieces)
        self._pieces.append(piece)
      out.append(self._ids[piece])
    return out

  def decode(self, ids) -> str:
    return "".join(self._pieces[i] for i in ids)
