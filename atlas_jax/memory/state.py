"""Inputs and streaming state of the memory op (SPEC.md §3, §5).

Shapes use the legend of SPEC.md §0. Gates are per token and per head; the state is per batch row and head.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.feature_maps import feature_dim

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


def check_weights(init_weights: Weights, config: MemoryConfig, key_dim: int, value_dim: int,
                  heads: int | None = None) -> None:
  """Φ_init {name: [H, m, n]} must have the config's names, one H (`heads` if given), the shapes of K and V
  (through φ) and one hidden width F."""
  if set(init_weights) != set(config.weight_names):
    raise ValueError(f"init_weights has {sorted(init_weights)}; kind={config.kind!r} needs "
                     f"{list(config.weight_names)}.")
  heads = next(iter(init_weights.values())).shape[0] if heads is None else heads
  p = feature_dim(config, key_dim)
  expected = {"W": (value_dim, p), "W1": (value_dim, None), "W2": (None, p), "W3": (None, p)}
  hidden = None
  for name, w in init_weights.items():
    rows, cols = expected[name]
    if w.ndim != 3 or w.shape[0] != heads:
      raise ValueError(f"init_weights[{name!r}] has shape {w.shape}; expected [H={heads}, m, n].")
    if (rows is not None and w.shape[1] != rows) or (cols is not None and w.shape[2] != cols):
      raise ValueError(f"init_weights[{name!r}] has shape {w.shape}; expected [H, {rows or 'F'}, {cols or 'F'}] "
                       f"(V={value_dim}, P={p}).")
    f = w.shape[2] if name == "W1" else (w.shape[1] if name in ("W2", "W3") else None)
    if f is not None and hidden is not None and f != hidden:
      raise ValueError(f"MLP hidden widths disagree across init_weights: {f} vs {hidden}.")
    hidden = f if f is not None else hidden


def init_state(config: MemoryConfig, init_weights: Weights, batch_size: int, key_dim: int,
               value_dim: int) -> MemoryState:
  """The state before the first token: Φ = A = Φ_init (per head, [H, m, n]) broadcast over B; S = 0.

  key_dim K and value_dim V are those of the q, k and v the state will be used with; Φ_init's shapes must
  agree with them (W [H, V, P] with P = feature_dim(config, K), or W1 [H, V, F] and W2, W3 [H, F, P]).
  The state's dtype is float32, or float64 when Φ_init is float64 (used by the equivalence tests).
  """
  check_weights(init_weights, config, key_dim, value_dim)
  first = next(iter(init_weights.values()))
  dtype = state_dtype(first.dtype)
  weights = {
      name: jnp.broadcast_to(w.astype(dtype), (batch_size,) + w.shape)
      for name, w in init_weights.items()
  }
  heads = first.shape[0]
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
