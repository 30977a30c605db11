"""The memory function M(k; Φ), its per-token inner gradients, and Newton–Schulz (SPEC.md §1, §3.1, §3.5).

All functions here act on ONE head: fast weights are a dict of float32 matrices (``W`` for ``linear``;
``W1`` [V, F], ``W2`` [F, P] (and ``W3`` [F, P]) for the MLP kinds), rows of inputs are tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from atlas_jax.memory.config import MemoryConfig

Weights = dict[str, jnp.ndarray]

# gelu is jax.nn.gelu's tanh approximation: gelu(x) = ½ x (1 + tanh(c (x + 0.044715 x³))), c = sqrt(2/π).
_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_and_grad(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """gelu(x) and d gelu(x) / dx for the tanh approximation, sharing one tanh."""
  t = jnp.tanh(_GELU_C * (x + 0.044715 * x**3))
  value = 0.5 * x * (1.0 + t)
  grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)
  return value, grad


def silu_grad(x: jnp.ndarray) -> jnp.ndarray:
  """d silu(x) / dx = σ(x) (1 + x (1 − σ(x)))."""
  s = jax.nn.sigmoid(x)
  return s * (1.0 + x * (1.0 - s))


def weight_shapes(config: MemoryConfig, value_dim: int, feature_dim: int, hidden_dim: int) -> dict[str, tuple]:
  """Shapes of one head's fast weights: linear W [V, P]; mlp W1 [V, F], W2 [F, P]; gated_mlp adds W3 [F, P]."""
  if config.kind == "linear":
    return {"W": (value_dim, feature_dim)}
  shapes = {"W1": (value_dim, hidden_dim), "W2": (hidden_dim, feature_dim)}
  if config.kind == "gated_mlp":
    shapes["W3"] = (hidden_dim, feature_dim)
  return shapes


def _hidden(config: MemoryConfig, w: Weights, phi: jnp.ndarray):
  """Layer 2 of the MLP kinds on rows φ [N, P] → (z [N, F], and what the backward needs)."""
  h = phi @ w["W2"].T
  if config.kind == "mlp":
    z, dz = gelu_and_grad(h)
    return z, (dz,)
  h3 = phi @ w["W3"].T
  return jax.nn.silu(h) * h3, (h, h3)


def apply(config: MemoryConfig, w: Weights, phi: jnp.ndarray, raw: jnp.ndarray) -> jnp.ndarray:
  """M(k; Φ) for rows φ(k) [N, P] and raw keys k [N, K] (used by the residual r(k) = k) → [N, V]."""
  if config.kind == "linear":
    out = phi @ w["W"].T
  else:
    z, _ = _hidden(config, w, phi)
    out = z @ w["W1"].T
  return out + raw if config.residual else out


def factors(config: MemoryConfig, w: Weights, phi: jnp.ndarray, raw: jnp.ndarray, v: jnp.ndarray):
  """Per-token gradient factors at weights w (CHUNKED.md §C.1).

  ∇_Φ ℓ_i(w) = 𝓛_iᵀ 𝓡_i for every weight matrix, an outer product of a left factor (a row of 𝓛) and a right
  factor (a row of 𝓡). Returns {name: (𝓛 [N, m], 𝓡 [N, n])} for rows φ [N, P], raw keys [N, K], values [N, V].
  """
  # e_i = ∂ℓ_i/∂M: M(k_i) − v_i for l2, −v_i for dot.
  if config.kind == "linear":
    e = -v if config.bias == "dot" else apply(config, w, phi, raw) - v
    return {"W": (e, phi)}
  z, saved = _hidden(config, w, phi)
  if config.bias == "dot":
    e = -v
  else:
    e = z @ w["W1"].T + (raw if config.residual else 0.0) - v
  d = e @ w["W1"]  # W1ᵀ e_i, rows [N, F]
  if config.kind == "mlp":
    (dz,) = saved
    return {"W1": (e, z), "W2": (d * dz, phi)}
  h, h3 = saved
  return {
      "W1": (e, z),
      "W2": (d * h3 * silu_grad(h), phi),
      "W3": (d * jax.nn.silu(h), phi),
  }


def clip_scale(squared_norms: jnp.ndarray, max_norm: float) -> jnp.ndarray:
  """min(1, c / ‖g‖) from ‖g‖² (``MemoryConfig.max_grad_norm``); the tiny floor keeps ‖0‖'s gradient finite."""
  return max_norm / jnp.maximum(max_norm, jnp.sqrt(squared_norms + 1e-30))


def clip_factors(config: MemoryConfig, facs):
  """``factors`` with every token's gradient 𝓛_iᵀ 𝓡_i bounded to norm ``config.max_grad_norm`` (None: unchanged).

  ‖𝓛_iᵀ 𝓡_i‖_F = ‖𝓛_i‖ ‖𝓡_i‖ for an outer product, so the norm over all matrices needs only the factor rows.
  """
  if config.max_grad_norm is None:
    return facs
  squared = sum(jnp.sum(left * left, axis=-1) * jnp.sum(right * right, axis=-1) for left, right in facs.values())
  scale = clip_scale(squared, config.max_grad_norm)[:, None]
  return {name: (left * scale, right) for name, (left, right) in facs.items()}


def _sum_squares(x: jnp.ndarray) -> jnp.ndarray:
  return jnp.sum(x * x, axis=(-2, -1), keepdims=True)


def newton_schulz(x: jnp.ndarray, steps: int) -> jnp.ndarray:
  """NS_k of SPEC.md §3.5 on the last two axes of x [..., m, n] (batched over the leading axes).

  X ← X / (‖X‖_F + 1e-7); k times: A = X Xᵀ, X ← a X + (b A + c A²) X, on the wide orientation (m ≤ n).
  The norm has a tiny floor inside the square root so that NS(0) = 0 has finite gradients.
  """
  a, b, c = 3.4445, -4.7750, 2.0315
  transpose = x.shape[-2] > x.shape[-1]
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  x = x / (jnp.sqrt(_sum_squares(x) + 1e-30) + 1e-7)
  for _ in range(steps):
    gram = x @ jnp.swapaxes(x, -1, -2)
    x = a * x + (b * gram + c * gram @ gram) @ x
  return jnp.swapaxes(x, -1, -2) if transpose else x
