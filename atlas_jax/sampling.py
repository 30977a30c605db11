"""Decoding: prefill a prompt into the model's cache, then sample one token at a time.

Samplers: greedy (temperature 0), temperature, top-k and top-p (nucleus), combinable. A memory model's decode
state is its fixed-size streaming state (plus SWA ring buffers); only global attention caches grow with length.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
from flax import nnx

from atlas_jax.model import AtlasLM, check_tokens

MIN_TEMPERATURE = 1e-6


def _check_sampling(temperature, top_k, top_p) -> tuple[float, int, float]:
  """The sampling settings as Python numbers (they are static in the decode loop), or a ValueError."""
  if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
    raise ValueError(f"top_k={top_k!r}; expected an integer ≥ 0 (0 keeps every token).")
  if isinstance(temperature, bool):
    raise ValueError(f"temperature={temperature}; expected a number.")
  temperature, top_p = float(temperature), float(top_p)
  if not (math.isfinite(temperature) and (temperature == 0.0 or temperature >= MIN_TEMPERATURE)):
    raise ValueError(f"temperature={temperature}; expected 0 (greedy) or a finite value ≥ {MIN_TEMPERATURE} (a floor "
                     "we chose: tinier ones sample the argmax anyway, or overflow logits / temperature in float32).")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p}; expected 0 < top_p ≤ 1 (1 keeps every token).")
  return temperature, int(top_k), top_p


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Sample ids from logits [B, vocab]. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""
  temperature, top_k, top_p = _check_sampling(temperature, top_k, top_p)
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k and top_k < logits.shape[-1]:  # top_k ≥ vocab keeps every token
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep a token if the mass before it is < top_p (the most likely token is always kept).
    drop_sorted = ((cumulative - jax.nn.softmax(sorted_logits, axis=-1)) >= top_p).at[:, 0].set(False)
    drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    logits = jnp.where(drop, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "temperature", "top_k", "top_p"))
def _decode(graphdef, state, cache, first, key, *, steps, temperature, top_k, top_p):
  # The parameters travel in the carry and the model is merged inside the body: merged outside, nnx.scan over
  # layers and nnx.remat would touch parameters of another trace level.
  def step(carry, key):
    token, cache, state = carry
    logits, cache = nnx.merge(graphdef, state)(token[:, None], cache)
    nxt = sample_logits(logits[:, -1], key, temperature, top_k, top_p)
    return (nxt, cache, state), nxt

  _, tokens = jax.lax.scan(step, (first, cache, state), jax.random.split(key, steps))
  return jnp.moveaxis(tokens, 0, 1)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _prefill(graphdef, state, prompt, cache):
  return nnx.merge(graphdef, state)(prompt, cache)


def generate(model: AtlasLM, prompt: jax.Array, max_new_tokens: int, key: jax.Array, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Continue `prompt` [B, T] by `max_new_tokens` sampled tokens → [B, T + max_new_tokens].

  Every row continues from position T: rows of different lengths need separate calls (there is no padding mask).
  """
  prompt = jnp.asarray(prompt)
  if prompt.ndim != 2 or prompt.shape[1] == 0:
    raise ValueError(f"prompt must be [B, T] with T ≥ 1; got shape {prompt.shape}.")
  check_tokens(prompt, model.config.vocab_size)
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
    raise ValueError(f"max_new_tokens={max_new_tokens!r}; expected an integer ≥ 0.")
  temperature, top_k, top_p = _check_sampling(temperature, top_k, top_p)  # before the prefill's compile
  if max_new_tokens == 0:
    return prompt
  batch, length = prompt.shape
  cache = model.init_cache(batch, length + max_new_tokens)
  graphdef, state = nnx.split(model)
  logits, cache = _prefill(graphdef, state, prompt, cache)
  key, first_key = jax.random.split(key)
  first = sample_logits(logits[:, -1], first_key, temperature, top_k, top_p)
  if max_new_tokens == 1:
    return jnp.concatenate([prompt, first[:, None]], axis=1)
  rest = _decode(graphdef, state, cache, first, key, steps=max_new_tokens - 1, temperature=temperature,
                 top_k=top_k, top_p=top_p)
  return jnp.concatenate([prompt, first[:, None], rest], axis=1)
