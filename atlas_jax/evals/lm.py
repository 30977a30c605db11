"""`LanguageModel`: an AtlasLM + tokenizer that scores and continues text by streaming (EVALS_NOTES.md §4.1).

    lm = LanguageModel(model, tokenizer, chunk_size=256)
    lm.logprobs(ids)                      # [len(ids) − 1]: log p(ids[i] | ids[:i]) for i ≥ 1
    lm.loglikelihood(context_ids, continuation_ids) → (Σ log p(continuation | context), is_greedy)
    lm.rolling_loglikelihood(ids)         # Σ log p(ids | ⟨sep⟩), every token scored once
    lm.generate("Question: ...", 32, stop=["\n"])   # greedy, cut at the first stop string

Streaming: a sequence is fed through ``model(chunk, cache)`` piece by piece, batch 1, carrying the cache (the
memories' fixed-size state, attention KV caches, SWA ring buffers), so a memory model scores any length in
constant device memory. There is no padding: a sequence of n tokens is cut into ⌊n / chunk_size⌋ full chunks
followed by the binary decomposition of the remainder (n mod chunk_size = Σ 2^j, largest piece first; 13 →
8 + 4 + 1). Every piece runs with its true length, so no padding token can reach the recurrent state, and the
jitted step (one per piece length, shared by all LanguageModels of the same model structure) compiles for at most
1 + ⌊log2 chunk_size⌋ lengths. The streaming state remembers its absolute position (memory chunk boundaries at
multiples of C, RoPE positions), so the result equals the one-shot ``model(ids)`` whatever the cut.

Caches: memory layers and SWA need no maximum length. Global attention (``attention`` blocks) and the kernel
memories (``kernel_memory``) keep one slot per token, so for those models the cache is sized by the total length
of the sequence, rounded up to a power of two (≥ 64) to bound recompiles; feeding beyond it is an error.

Conditioning on nothing: an empty context (and the start of a rolling document or a perplexity stream) is the
tokenizer's document separator ``tokenizer.eos_id`` (the byte tokenizer's 256; the id training puts between
packed documents), unless ``prefix_id`` says otherwise. Non-empty contexts get no prefix unless
``prefix_contexts=True``. Generation stops at the separator too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atlas_jax.model import AtlasLM, check_tokens

_GROWING_BLOCKS = ("attention", "kernel_memory")  # block types whose cache holds one slot per token
_MIN_CAPACITY = 64


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _step(graphdef, params, cache, tokens, targets):
  """One piece: tokens, targets [T] int32 → (log p(targets) [T], argmax ids [T], log p(· | all) [V], cache)."""
  model = nnx.merge(graphdef, params)
  logits, cache = model(tokens[None], cache)
  logp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, targets[:, None], axis=-1)[:, 0]
  return picked, jnp.argmax(logp, axis=-1).astype(jnp.int32), logp[-1], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "capacity"))
def _init_cache(graphdef, params, *, capacity):
  return nnx.merge(graphdef, params).init_cache(1, capacity)


def pieces(length: int, chunk_size: int) -> list[int]:
  """Piece lengths for `length` tokens: full chunks, then the remainder's powers of two, largest first."""
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be ≥ 1; got {chunk_size}.")
  out = [chunk_size] * (length // chunk_size)
  rest = length % chunk_size
  while rest:
    piece = 1 << (rest.bit_length() - 1)
    out.append(piece)
    rest -= piece
  return out


@dataclasses.dataclass
class StreamState:
  """The model's cache after `position` tokens (batch 1), and log p(next | tokens so far) [V] (None at start).

  Copy with ``dataclasses.replace`` to branch (arrays are immutable; ``feed`` replaces the fields).
  """

  cache: object
  capacity: int | None  # tokens the cache can hold (None: unbounded)
  position: int = 0
  last_logprobs: jax.Array | None = None


class LanguageModel:
  """Streaming scoring and greedy generation for an ``AtlasLM`` with a tokenizer (see the module docstring).

  The parameters are a snapshot taken at construction (later changes to `model` are not seen).
  """

  def __init__(self, model: AtlasLM, tokenizer, *, chunk_size: int = 256, prefix_id: int | None = None,
               prefix_contexts: bool = False):
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be ≥ 1; got {chunk_size}.")
    self.model, self.tokenizer, self.chunk_size = model, tokenizer, int(chunk_size)
    self.config = model.config
    if tokenizer.vocab_size > self.config.vocab_size:
      raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                       f"{self.config.vocab_size}.")
    if prefix_id is None:
      prefix_id = getattr(tokenizer, "eos_id", None)
      if prefix_id is None:
        raise ValueError("the tokenizer has no eos_id; pass prefix_id= (the token an empty context stands for).")
    if not 0 <= prefix_id < self.config.vocab_size:
      raise ValueError(f"prefix_id={prefix_id} is outside the model's vocabulary [0, {self.config.vocab_size}).")
    self.prefix_id, self.prefix_contexts = int(prefix_id), prefix_contexts
    self._graphdef, self._params = nnx.split(model)
    self._growing = any(b in _GROWING_BLOCKS for b in self.config.blocks)
    self._context_memo: tuple[tuple, StreamState] | None = None

  # Tokens ↔ text.
  def encode(self, text: str) -> list[int]:
    return list(self.tokenizer.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids])

  # Streaming primitives.
  def start(self, total_length: int) -> StreamState:
    """An empty state that can take `total_length` tokens (only models with growing caches need the bound)."""
    capacity = self._capacity(total_length)
    cache = _init_cache(self._graphdef, self._params, capacity=capacity or self.config.swa_window)
    return StreamState(cache, capacity)

  def _capacity(self, total_length: int) -> int | None:
    """Cache slots for `total_length` tokens: a power of two ≥ 64 for growing caches, else None (unbounded)."""
    if not self._growing:
      return None
    return max(_MIN_CAPACITY, 1 << max(int(total_length) - 1, 0).bit_length())

  def feed(self, state: StreamState, tokens: Sequence[int],
           targets: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Advance `state` over `tokens` [T]; → (log p(targets[i] | …, tokens[i]) [T] float32, argmax ids [T]).

    targets default to zeros (their log-probabilities are then meaningless); ``state.last_logprobs`` is
    log p(· | everything fed) afterwards.
    """
    tokens = np.asarray(tokens, np.int32).reshape(-1)
    targets = np.zeros_like(tokens) if targets is None else np.asarray(targets, np.int32).reshape(-1)
    if targets.shape != tokens.shape:
      raise ValueError(f"targets has {targets.size} ids for {tokens.size} tokens; expected one per token.")
    check_tokens(tokens, self.config.vocab_size)
    check_tokens(targets, self.config.vocab_size)
    if state.capacity is not None and state.position + tokens.size > state.capacity:
      raise ValueError(f"the cache holds {state.capacity} tokens; feeding {tokens.size} more after "
                       f"{state.position} overflows it. Start the state with a larger total_length.")
    logps, greedy, start = [], [], 0
    for length in pieces(tokens.size, self.chunk_size):
      piece = slice(start, start + length)
      logp, top, state.last_logprobs, state.cache = _step(self._graphdef, self._params, state.cache,
                                                          jnp.asarray(tokens[piece]), jnp.asarray(targets[piece]))
      logps.append(logp)
      greedy.append(top)
      start += length
    state.position += tokens.size
    if not logps:
      return np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    # Read back after every piece is dispatched, so that the device runs ahead of the host.
    return np.concatenate([np.asarray(x) for x in logps]), np.concatenate([np.asarray(x) for x in greedy])

  # Scoring.
  def logprobs(self, ids: Sequence[int]) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for i = 1 … n−1, float32 [n − 1], streamed in chunks."""
    ids = np.asarray(ids, np.int32).reshape(-1)
    if ids.size == 0:
      raise ValueError("ids is empty; logprobs needs at least one token (the first is only conditioned on).")
    state = self.start(ids.size)
    return self.feed(state, ids[:-1], ids[1:])[0]

  def _context_state(self, context: list[int], total_length: int) -> StreamState:
    """The state after `context`, reusing the last context's state when it is the same (multiple choice)."""
    key = (tuple(context), self._capacity(total_length))
    if self._context_memo is None or self._context_memo[0] != key:
      state = self.start(total_length)
      self.feed(state, context)
      self._context_memo = (key, state)
    return dataclasses.replace(self._context_memo[1])

  def loglikelihood(self, context_ids: Sequence[int], continuation_ids: Sequence[int]) -> tuple[float, bool]:
    """(Σ log p(continuation | context), whether greedy decoding reproduces the continuation exactly).

    An empty context is the separator token (``prefix_id``).
    """
    context = [int(i) for i in context_ids]
    continuation = np.asarray(continuation_ids, np.int32).reshape(-1)
    if continuation.size == 0:
      raise ValueError("continuation_ids is empty; there is nothing to score.")
    if not context or self.prefix_contexts:
      context = [self.prefix_id] + context
    check_tokens(continuation, self.config.vocab_size)
    state = self._context_state(context, len(context) + continuation.size)
    first = np.asarray(state.last_logprobs)
    logp, greedy = self.feed(state, continuation[:-1], continuation[1:])
    total = float(first[continuation[0]]) + float(np.sum(logp, dtype=np.float64))
    is_greedy = bool(int(np.argmax(first)) == continuation[0] and np.all(greedy == continuation[1:]))
    return total, is_greedy

  def rolling_loglikelihood(self, ids: Sequence[int]) -> float:
    """Σ_i log p(ids[i] | ⟨sep⟩, ids[:i]): the whole document, each token scored once (0.0 when empty)."""
    ids = [int(i) for i in ids]
    if not ids:
      return 0.0
    return float(np.sum(self.logprobs([self.prefix_id] + ids), dtype=np.float64))

  # Generation.
  def greedy_tokens(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Iterator[int]:
    """Greedy continuation of `prompt_ids` (empty: the separator), one id at a time; ends at the separator
    (not yielded) or after `max_new_tokens`. The prompt is streamed in chunks, then one token per step."""
    if max_new_tokens < 0:
      raise ValueError(f"max_new_tokens must be ≥ 0; got {max_new_tokens}.")
    ids = [int(i) for i in prompt_ids]
    if not ids or self.prefix_contexts:
      ids = [self.prefix_id] + ids
    if max_new_tokens == 0:
      return
    state = self.start(len(ids) + max_new_tokens)
    _, top = self.feed(state, ids)
    for n in range(max_new_tokens):
      token = int(top[-1])  # argmax of log p(· | everything fed)
      if token == self.prefix_id:
        return
      yield token
      if n + 1 < max_new_tokens:
        _, top = self.feed(state, [token])

  def generate(self, prompt: str, max_new_tokens: int, stop: Sequence[str] = ()) -> str:
    """Greedy continuation of `prompt`, cut before the earliest occurrence of any `stop` string."""
    if isinstance(stop, str):
      stop = [stop]
    stop = [s for s in stop if s]
    out: list[int] = []
    for token in self.greedy_tokens(self.encode(prompt), max_new_tokens):
      out.append(token)
      if stop:
        text = self.decode(out)
        hits = [i for i in (text.find(s) for s in stop) if i >= 0]
        if hits:
          return text[:min(hits)]
    return self.decode(out)
