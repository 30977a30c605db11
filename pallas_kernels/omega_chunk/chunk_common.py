"""What every Omega kernel shares per chunk: the inputs, float32 matmuls, and the coefficient matrices.

The matmul helpers (``mm``, ``mm_tn``, ``mm_nt``, ``at``, ``row``) are kernel-safe jax.numpy (2-D matmuls,
elementwise math, axis reductions), so the state steps built on them lower to Triton and run in interpret mode.
The coefficients (``coefficients``, ``step_coefficients``) run in XLA before the kernels, batched over every
(head, chunk), with exact float32 products (CHUNKED.md §C.4.6). Notation: CHUNKED.md §C.0–§C.4 and the docstring
of ``linear_math``. Slots come in two blocks of C rows: the chunk's own ("c") and the previous chunk's ("p", whose
last W − 1 rows are the carried window; zeros before the start), so W − 1 ≤ C.

    Dᵅ = exp(segsum(log α)),  Dᶿ = exp(segsum(log θ)),  ᾱ = exp(cumsum(log α)),  θ̄ = exp(cumsum(log θ))
    Γγ_c[u, i] = 1[u − W < i ≤ u] γc_i,   Γγ_p[u, i] = 1[i > u + C − W] γp_i        (the band with carry, §C.2)
    Ψ = Dᶿ Γγ (Γγ without momentum),  Λ = Dᵅ diag(η) Ψ,  μ = Dᵅ diag(η) θ̄            (§C.3)

segsum and cumsum are the xla path's (``atlas_jax.memory.coefficients``, §C.4.3): sums of log gates within the
chunk, never differences of cumulative sums, so a gate of exactly 0 (log −∞) gives exact zeros and finite
gradients, and tiny gates lose no accuracy to cancellation.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple

import jax
import jax.numpy as jnp

from atlas_jax.memory.coefficients import cumsum, segsum

# The precision of the state steps' matmuls (``mm``, inside the kernels). HIGHEST is exact float32 (the
# interpreter, XLA); compiled Triton kernels use a TF32 tensor-core pass by default instead
# (``kernel.TRITON_DOTS``), because Triton lowers exact float32 dots to unrolled FMA code that took over 5 minutes
# to compile at K = V = 128 on an H200. The coefficients do not read it: they multiply exponentials of log-gate
# sums and run in XLA, always at HIGHEST (``_exact``, CHUNKED.md §C.4.6).
_PRECISION = contextvars.ContextVar("omega_chunk_dot_precision", default=jax.lax.Precision.HIGHEST)


@contextlib.contextmanager
def dot_precision(precision):
  """Trace the chunk math's matmuls at ``precision`` (a lax.Precision or DotAlgorithmPreset)."""
  token = _PRECISION.set(precision)
  try:
    yield
  finally:
    _PRECISION.reset(token)


def mm(a, b):
  """a @ b in float32, at the precision set by ``dot_precision`` (default: exact float32)."""
  return jnp.dot(a, b, precision=_PRECISION.get(), preferred_element_type=jnp.float32)


def mm_tn(a, b):
  """aᵀ @ b."""
  return mm(a.T, b)


def mm_nt(a, b):
  """a @ bᵀ."""
  return mm(a, b.T)


class Chunk(NamedTuple):
  """One chunk's inputs for one head (and value tile), float32.

  q, kc, kp [C, P]: φ(q) of the chunk; φ(k) of the chunk's and of the previous chunk's slots.
  vc, vp [C, V]: values of the two slot blocks (minus r(k) for residual l2 memories).
  gc, gp [C]: γ of the two slot blocks.   eta [C]: η.
  log_alpha, log_theta [C]: log α and log θ of the chunk's rows (−∞ allowed: a gate of exactly 0).
  sel [C]: 1 at the chunk's last valid row, the row the end state is read at (earlier in a padded last chunk).

  A chunk's cotangents use the same fields (the "p" entries belong to the previous chunk's rows; sel has none).
  """
  q: jax.Array
  kc: jax.Array
  kp: jax.Array
  vc: jax.Array
  vp: jax.Array
  gc: jax.Array
  gp: jax.Array
  log_alpha: jax.Array
  eta: jax.Array
  log_theta: jax.Array
  sel: jax.Array


class Coefficients(NamedTuple):
  alpha_bar: jax.Array  # ᾱ [C]
  theta_bar: jax.Array  # θ̄ [C]
  psi_c: jax.Array      # Ψ_c [C, C]
  psi_p: jax.Array      # Ψ_p [C, C]
  lam_c: jax.Array      # Λ_c [C, C]
  lam_p: jax.Array      # Λ_p [C, C]
  mu: jax.Array         # μ [C]


def _exact(a, b):
  """a @ b in exact float32, whatever ``dot_precision`` says: the coefficients run in XLA, outside the kernels."""
  return jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def coefficients(x: Chunk, window: int, momentum: bool) -> Coefficients:
  c = x.log_alpha.shape[0]
  t = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
  i = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  gam_c = jnp.where((i <= t) & (i > t - window), x.gc[None, :], 0.0)  # slot i of this chunk is position i
  gam_p = jnp.where(i > t + c - window, x.gp[None, :], 0.0)  # slot i of the previous chunk is position i − C
  alpha_bar = jnp.exp(cumsum(x.log_alpha))
  dah = jnp.exp(segsum(x.log_alpha)) * x.eta[None, :]  # Dᵅ diag(η)
  if momentum:
    theta_bar = jnp.exp(cumsum(x.log_theta))
    d_theta = jnp.exp(segsum(x.log_theta))
    psi_c, psi_p = _exact(d_theta, gam_c), _exact(d_theta, gam_p)
    mu = _exact(dah, theta_bar)
  else:
    theta_bar = jnp.zeros_like(alpha_bar)
    psi_c, psi_p = gam_c, gam_p
    mu = jnp.zeros_like(alpha_bar)
  return Coefficients(alpha_bar, theta_bar, psi_c, psi_p, _exact(dah, psi_c), _exact(dah, psi_p), mu)


def step_coefficients(x: Chunk, window: int, momentum: bool, matrices: bool = False):
  """The state-free part of one chunk: (M_c, M_p, ᾱ, μ, θ̄, λ_c, λ_p, ψ_c, ψ_p[, Λ_c, Λ_p]) with the scores
  M_b = Λ_b ⊙ Q K_bᵀ [C, C] and λ_b = Λ_b[l], ψ_b = Ψ_b[l] [C] (l the row ``sel`` marks); the full Λ_b with
  ``matrices`` (MLP memories read layer 1 with data-dependent scores). Reads q, kc, kp, gc, gp, log_alpha, eta,
  log_theta, sel. The kernels' wrapper runs it for every (head, chunk) at once, before the sequential loop, in
  XLA: every product here is exact float32 (HIGHEST), whatever ``dot_precision`` the kernels' matmuls use."""
  co = coefficients(x, window, momentum)
  out = (co.lam_c * _exact(x.q, x.kc.T), co.lam_p * _exact(x.q, x.kp.T), co.alpha_bar, co.mu, co.theta_bar,
         row(x.sel, co.lam_c), row(x.sel, co.lam_p), row(x.sel, co.psi_c), row(x.sel, co.psi_p))
  return out + ((co.lam_c, co.lam_p) if matrices else ())


def row(sel, m):
  """Row l of m [C, n] (sel is one-hot over rows) → [n]."""
  return jnp.sum(sel[:, None] * m, axis=0)


def at(sel, v):
  """v[l] for v [C] → scalar."""
  return jnp.sum(sel * v)
