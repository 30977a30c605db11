"""Softmax attention with RoPE: global causal or sliding-window, with a KV cache for decoding.

Training calls go through ``jax.nn.dot_product_attention`` (``is_causal``, ``local_window_size``), whose cuDNN
path a GPU can use. With a cache, under an explicit position mask: global attention writes the new keys at
slot = position, then its queries attend over the cache; a sliding window's queries attend over [ring ‖ new]
(a ring buffer of w slots, slot = position mod w, which the new keys may overwrite), then the keys are written.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from atlas_jax.layers import Dense, check_activations, rope


class KVCache(NamedTuple):
  """k, v [B, S, N, hd]; slot_pos [S] absolute position held by each slot (−1: empty); index = next position."""

  k: jax.Array
  v: jax.Array
  slot_pos: jax.Array
  index: jax.Array


class Attention(nnx.Module):
  """Multi-head causal attention, global (window=None) or sliding-window of `window` tokens."""

  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs, window: int | None = None,
               rope_base: float = 10000.0, project_out: bool = True, dtype=jnp.float32,
               param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.num_heads, self.head_dim = num_heads, width // num_heads
    self.q = Dense(width, width, ("embed", "heads"), **kw)
    self.k = Dense(width, width, ("embed", "heads"), **kw)
    self.v = Dense(width, width, ("embed", "heads"), **kw)
    self.out = Dense(width, width, ("heads", "embed"), **kw) if project_out else None
    self.window = window
    self.rope_base = rope_base
    self.dtype = dtype

  def init_cache(self, batch: int, max_length: int) -> KVCache:
    slots = max_length if self.window is None else min(self.window, max_length)
    shape = (batch, slots, self.num_heads, self.head_dim)
    return KVCache(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype),
                   jnp.full((slots,), -1, jnp.int32), jnp.zeros((), jnp.int32))

  def __call__(self, x: jax.Array, cache: KVCache | None = None):
    """x [B, T, D] → (y [B, T, D], cache or None)."""
    check_activations(x, self.num_heads * self.head_dim, "Attention")
    batch, length, _ = x.shape
    split = lambda y: y.reshape(batch, length, self.num_heads, self.head_dim)
    start = jnp.zeros((), jnp.int32) if cache is None else cache.index
    positions = start + jnp.arange(length, dtype=jnp.int32)
    q = rope(split(self.q(x)), positions, self.rope_base)
    k = rope(split(self.k(x)), positions, self.rope_base)
    v = split(self.v(x))
    if cache is None:
      window = None if self.window is None else (self.window - 1, 0)
      y = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window)
    else:
      if self.window is None:  # a global cache has a slot per position: write the piece, then read the cache
        cache = self._write(cache, k, v, positions)
        keys, values, key_pos = cache.k, cache.v, cache.slot_pos
      else:  # a ring: the piece may overwrite keys its own first queries still see, so read it beside the cache
        keys = jnp.concatenate([cache.k, k], axis=1)
        values = jnp.concatenate([cache.v, v], axis=1)
        key_pos = jnp.concatenate([cache.slot_pos, positions])
      mask = (key_pos[None, :] >= 0) & (key_pos[None, :] <= positions[:, None])
      if self.window is not None:
        mask &= key_pos[None, :] > positions[:, None] - self.window
      y = jax.nn.dot_product_attention(q, keys, values, mask=mask[None, None])
      slots = cache.k.shape[1]
      if self.window is None or slots < self.window:  # the cache holds init_cache's max_length positions
        # Later positions would need keys the cache dropped (global) or overwrote (a ring shorter than the
        # window); under jit that cannot raise, so their outputs are NaN, never silently wrong.
        y = jnp.where((positions < slots)[None, :, None, None], y, jnp.nan)
      if self.window is not None:
        cache = self._write(cache, k, v, positions)
    y = y.reshape(batch, length, self.num_heads * self.head_dim)
    return (y if self.out is None else self.out(y)), cache

  def _write(self, cache: KVCache, k, v, positions) -> KVCache:
    if k.shape[1] == 0:  # an empty piece leaves the cache as it is
      return cache
    if self.window is None:  # a slot per position; positions past the cache are dropped (their outputs are NaN)
      index = positions
    else:  # a ring: only the last `slots` new tokens survive
      slots = cache.k.shape[1]
      keep = min(k.shape[1], slots)
      k, v, positions = k[:, -keep:], v[:, -keep:], positions[-keep:]
      index = positions % slots
    return KVCache(cache.k.at[:, index].set(k.astype(cache.k.dtype), mode="drop"),
                   cache.v.at[:, index].set(v.astype(cache.v.dtype), mode="drop"),
                   cache.slot_pos.at[index].set(positions, mode="drop"), positions[-1] + 1)
