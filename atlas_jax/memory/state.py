"""Inputs and streaming state of the memory op (SPEC.md §3, §5).

Shapes use the legend of SPEC.md §0. Gates are per token and per head; the state is per batch row and head.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from atlas_jax.memory.config import MemoryConfig

Weights = dict[str, jnp.ndarray]


class Gates(NamedTuple):
  """Per-token, per-head gates, each [B, T, H] (computed in float32 by the layer).

  log_alpha: log α ≤ 0, retention (α = exp(log_alpha)); take it as −softplus(−logit) for accuracy near 1.
  eta: η ≥ 0, inner learning rate.
  gamma: γ ∈ [0, 1], Omega token gate of the token being remembered.
  log_theta: log θ ≤ 0, momentum decay; required iff the config has momentum.
  """

  log_alpha: jnp.ndarray
  eta: jnp.ndarray
  gamma: jnp.ndarray
  log_theta: jnp.ndarray | None = None


class MemoryState(NamedTuple):
  """Streaming state after the last processed token (float32, or float64 under x64; ``position`` int32).

  weights:  Φ, the fast weights, {name: [B, H, m, n]}.
  anchor:   A, the weights every gradient of the current chunk is taken at, same layout.
  momentum: S, same layout (S = g of the last token when momentum is off).
  window_k, window_v, window_gamma: the last W − 1 tokens' raw keys [B, H, W−1, K], values [B, H, W−1, V] and
    γ [B, H, W−1], oldest first; slots before the sequence start have γ = 0 and k = v = 0.
  decay:    Π α over the tokens of the current chunk seen so far [B, H] (used by chunk granularity).
  position: number of tokens processed so far, int32 scalar (chunk boundaries are multiples of C).
  """

  weights: Weights
  anchor: Weights
  momentum: Weights
  window_k: jnp.ndarray
  window_v: jnp.ndarray
  window_gamma: jnp.ndarray
  decay: jnp.ndarray
  position: jnp.ndarray


def state_dtype(dtype) -> jnp.dtype:
  """Inner-loop dtype: float32 for bf16/f16/f32 inputs (never lower), float64 for float64 inputs."""
  return jnp.promote_types(dtype, jnp.float32)


def init_state(config: MemoryConfig, init_weights: Weights, batch_size: int, key_dim: int,
               value_dim: int) -> MemoryState:
  """The state before the first token: Φ = A = Φ_init (per head, [H, m, n]) broadcast over B; S = 0.

  The state's dtype is float32, or float64 when Φ_init is float64 (used by the equivalence tests).
  """
  dtype = state_dtype(next(iter(init_weights.values())).dtype)
  weights = {
      name: jnp.broadcast_to(w.astype(dtype), (batch_size,) + w.shape)
      for name, w in init_weights.items()
  }
  heads = next(iter(init_weights.values())).shape[0]
  carry = config.window - 1
  return MemoryState(
      weights=weights,
      anchor=weights,
      momentum={name: jnp.zeros_like(w) for name, w in weights.items()},
      window_k=jnp.zeros((batch_size, heads, carry, key_dim), dtype),
      window_v=jnp.zeros((batch_size, heads, carry, value_dim), dtype),
      window_gamma=jnp.zeros((batch_size, heads, carry), dtype),
      decay=jnp.ones((batch_size, heads), dtype),
      position=jnp.zeros((), jnp.int32),
  )
