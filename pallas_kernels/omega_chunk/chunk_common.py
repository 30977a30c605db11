"""What every Omega kernel shares per chunk: the inputs, float32 matmuls, and the coefficient matrices.

Kernel-safe jax.numpy only (2-D matmuls, elementwise math, iotas, axis reductions), so it lowers to Triton and
runs in interpret mode. Notation: CHUNKED.md §C.0–§C.4 and the docstring of ``linear_math``. Slots come in two
blocks of C rows: the chunk's own ("c") and the previous chunk's ("p", whose last W − 1 rows are the carried
window; zeros before the start), so W − 1 ≤ C.

    Dᵅ_{tτ} = exp(ca_t − ca_τ)·1[τ ≤ t],  Dᶿ likewise;  ᾱ = exp(ca), θ̄ = exp(ct)
    Γγ_c[u, i] = 1[u − W < i ≤ u] γc_i,   Γγ_p[u, i] = 1[i > u + C − W] γp_i        (the band with carry, §C.2)
    Ψ = Dᶿ Γγ (Γγ without momentum),  Λ = Dᵅ diag(η) Ψ,  μ = Dᵅ diag(η) θ̄            (§C.3)

The difference form exp(ca_t − ca_τ) is the one CHUNKED.md §C.4.3 allows for finite log gates (the layer takes
them as log σ of logits); masking happens before the exp, so no overflow reaches a gradient.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Every product here needs about float32 accuracy (the coefficient matrices multiply exponentials of log-gate
# sums, CHUNKED.md §C.4.6). HIGHEST is exact float32 (the interpreter, XLA); compiled Triton kernels use a
# TF32 tensor-core pass by default instead (``kernel.TRITON_DOTS``), because Triton lowers exact float32 dots
# to unrolled FMA code that took over 5 minutes to compile at K = V = 128 on an H200.
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
  ca, ct [C]: cumulative log α and log θ within the chunk (ca_t = Σ_{j≤t} log α_j).
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
  ca: jax.Array
  eta: jax.Array
  ct: jax.Array
  sel: jax.Array


class Coefficients(NamedTuple):
  alpha_bar: jax.Array  # ᾱ [C]
  theta_bar: jax.Array  # θ̄ [C]
  d_alpha: jax.Array    # Dᵅ [C, C]
  d_theta: jax.Array    # Dᶿ [C, C]
  dah: jax.Array        # Dᵅ diag(η) [C, C]
  band_c: jax.Array     # Γ_c [C, C] (0/1)
  band_p: jax.Array     # Γ_p [C, C]
  psi_c: jax.Array      # Ψ_c [C, C]
  psi_p: jax.Array      # Ψ_p [C, C]
  lam_c: jax.Array      # Λ_c [C, C]
  lam_p: jax.Array      # Λ_p [C, C]
  mu: jax.Array         # μ [C]


def _decay(cum):
  """exp(cum_t − cum_τ) for τ ≤ t, else 0 — masked before the exp."""
  c = cum.shape[0]
  t = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
  tau = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  lower = tau <= t
  diff = jnp.where(lower, cum[:, None] - cum[None, :], 0.0)
  return jnp.where(lower, jnp.exp(diff), 0.0)


def coefficients(x: Chunk, window: int, momentum: bool) -> Coefficients:
  c = x.ca.shape[0]
  t = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
  i = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  band_c = ((i <= t) & (i > t - window)).astype(jnp.float32)  # slot i of this chunk is position i
  band_p = (i > t + c - window).astype(jnp.float32)  # slot i of the previous chunk is position i − C
  gam_c = band_c * x.gc[None, :]
  gam_p = band_p * x.gp[None, :]
  alpha_bar = jnp.exp(x.ca)
  d_alpha = _decay(x.ca)
  dah = d_alpha * x.eta[None, :]
  if momentum:
    theta_bar = jnp.exp(x.ct)
    d_theta = _decay(x.ct)
    psi_c, psi_p = mm(d_theta, gam_c), mm(d_theta, gam_p)
    mu = jnp.sum(dah * theta_bar[None, :], axis=1)
  else:
    theta_bar = jnp.zeros_like(alpha_bar)
    d_theta = None
    psi_c, psi_p = gam_c, gam_p
    mu = jnp.zeros_like(alpha_bar)
  return Coefficients(alpha_bar, theta_bar, d_alpha, d_theta, dah, band_c, band_p, psi_c, psi_p,
                       mm(dah, psi_c), mm(dah, psi_p), mu)


def step_coefficients(x: Chunk, window: int, momentum: bool, matrices: bool = False):
  """The state-free part of one chunk: (M_c, M_p, ᾱ, μ, θ̄, λ_c, λ_p, ψ_c, ψ_p[, Λ_c, Λ_p]) with the scores
  M_b = Λ_b ⊙ Q K_bᵀ [C, C] and λ_b = Λ_b[l], ψ_b = Ψ_b[l] [C] (l the row ``sel`` marks); the full Λ_b with
  ``matrices`` (MLP memories read layer 1 with data-dependent scores). Reads q, kc, kp, gc, gp, ca, eta, ct, sel.
  The kernels' wrapper runs it for every (head, chunk) at once, before the sequential loop."""
  co = coefficients(x, window, momentum)
  out = (co.lam_c * mm_nt(x.q, x.kc), co.lam_p * mm_nt(x.q, x.kp), co.alpha_bar, co.mu, co.theta_bar,
         row(x.sel, co.lam_c), row(x.sel, co.lam_p), row(x.sel, co.psi_c), row(x.sel, co.psi_p))
  return out + ((co.lam_c, co.lam_p) if matrices else ())


def row(sel, m):
  """Row l of m [C, n] (sel is one-hot over rows) → [n]."""
  return jnp.sum(sel[:, None] * m, axis=0)


def at(sel, v):
  """v[l] for v [C] → scalar."""
  return jnp.sum(sel * v)
