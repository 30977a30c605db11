"""Momentum and retention folded into per-segment coefficient matrices (CHUNKED.md §C.2–§C.4).

For a segment of R rows (local positions t, τ) and N = W − 1 + R window slots (W − 1 carried tokens, then the
segment's tokens):

    ᾱ_t = Π_{j≤t} α_j,   θ̄_t = Π_{j≤t} θ_j,   Dᵅ_{tτ} = Π_{j=τ+1..t} α_j,   Dᶿ_{tτ} likewise (τ ≤ t; 0 above)
    Γ_{ui} = 1[u ≤ i ≤ u + W − 1]·1[u < L]       (the window band; rows past the L valid ones are zeroed)
    Ψ = Dᶿ Γ diag(γ)        μ = Dᵅ diag(η) θ̄        Λ = Dᵅ diag(η) Ψ   (= J Γ diag γ, J = Dᵅ diag(η) Dᶿ)

so that S_t = θ̄_t S_in + Σ_i Ψ_{ti} G_i and Φ_t = ᾱ_t Φ_in − μ_t S_in − Σ_i Λ_{ti} G_i. Products of gates are
taken in log space through a masked cumulative sum (never as ratios of cumulative products), so underflow gives
exact zeros and no NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


class Coefficients(NamedTuple):
  alpha_bar: jnp.ndarray  # ᾱ [R]
  theta_bar: jnp.ndarray  # θ̄ [R] (zeros without momentum)
  mu: jnp.ndarray  # μ [R] (zeros without momentum)
  decay_eta: jnp.ndarray  # Dᵅ diag(η) [R, R]
  lam: jnp.ndarray  # Λ [R, N]
  psi: jnp.ndarray  # Ψ [R, N]


def _lower(r: int, strict: bool = False) -> jnp.ndarray:
  """[R, R] with ones on and below the diagonal (strictly below if strict)."""
  rows, cols = jnp.arange(r)[:, None], jnp.arange(r)[None, :]
  return (rows > cols if strict else rows >= cols).astype(jnp.float32)


def cumsum(x: jnp.ndarray) -> jnp.ndarray:
  """Σ_{j≤t} x_j for x [R], as a matmul with the lower-triangular ones (XLA:CPU runs jnp.cumsum as a slow
  reduce-window). −∞ is floored at −1e30, as in `segsum`."""
  return jnp.matmul(_lower(x.shape[-1]).astype(x.dtype), jnp.maximum(x, -1e30), precision=_HIGHEST)


def segsum(x: jnp.ndarray) -> jnp.ndarray:
  """X_{tτ} = Σ_{j=τ+1..t} x_j for τ ≤ t and −∞ above the diagonal, for x [R] → [R, R].

  X = 1[j ≤ t] · diag(x) · 1[j > τ], one matmul that adds exactly the terms in range (no difference of
  cumulative sums, so no cancellation). x = −∞ is floored at −1e30 first (0 · −∞ would be NaN); exp of the
  result is then still exactly 0.
  """
  r = x.shape[-1]
  lower = _lower(r)
  x = jnp.maximum(x, -1e30)
  inside = jnp.matmul(lower.astype(x.dtype) * x[None, :], _lower(r, strict=True).astype(x.dtype),
                      precision=_HIGHEST)
  return jnp.where(lower > 0, inside, -jnp.inf)


def window_band(rows: int, window: int, valid: jnp.ndarray | int) -> jnp.ndarray:
  """Γ [R, N]: row u covers slots u … u + W − 1 (positions u − W + 1 … u); rows u ≥ valid are zero."""
  u = jnp.arange(rows)[:, None]
  i = jnp.arange(rows + window - 1)[None, :]
  return ((u <= i) & (i <= u + window - 1) & (u < valid)).astype(jnp.float32)


def coefficients(log_alpha, eta, log_theta, slot_gamma, valid, window: int) -> Coefficients:
  """Coefficients of one head's segment: gates [R] (log_theta None ⇔ no momentum), γ of the N slots [N]."""
  rows = log_alpha.shape[0]
  alpha_bar = jnp.exp(cumsum(log_alpha))
  decay_eta = jnp.exp(segsum(log_alpha)) * eta[None, :]
  banded = window_band(rows, window, valid) * slot_gamma[None, :]  # Γ diag(γ)
  if log_theta is None:
    theta_bar = jnp.zeros_like(alpha_bar)
    mu = jnp.zeros_like(alpha_bar)
    psi = banded
  else:
    theta_bar = jnp.exp(cumsum(log_theta))
    psi = jnp.matmul(jnp.exp(segsum(log_theta)), banded, precision=_HIGHEST)
    mu = jnp.matmul(decay_eta, theta_bar, precision=_HIGHEST)
  lam = jnp.matmul(decay_eta, psi, precision=_HIGHEST)
  return Coefficients(alpha_bar, theta_bar, mu, decay_eta, lam, psi)
