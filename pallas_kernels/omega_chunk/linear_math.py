"""One chunk of the linear Omega-rule memory, forward and hand-derived backward, in kernel-safe jax.numpy.

These functions are the bodies of the Pallas kernels in ``linear.py`` (called per chunk inside the kernels'
sequential loop) and of the plain-JAX scan in ``reference.py``. They use only 2-D matmuls, elementwise math,
iotas and axis reductions — no slicing of values, no concatenation, no cumulative sums — so the same code
lowers to Triton and runs in interpret mode. All math is float32.

Notation (CHUNKED.md §C.0–§C.5), one head and one tile of BV value rows, a chunk of C positions:

    inputs   q, kc, kp [C, P]   φ(q) of the chunk; φ(k) of the chunk ("c") and of the previous chunk ("p",
                                whose last W − 1 rows are the carried window slots; zeros before the start)
             vc, vp [C, BV]     values (minus r(k) for residual l2 memories), same two blocks
             gc, gp [C]         γ of the two blocks' slots
             ca, ct [C]         cumulative log α and log θ within the chunk (c_t = Σ_{j≤t} log α_j)
             eta [C]            η;   sel [C]   1 at the chunk's last valid row (the row the end state is read at)
    state    A, S [BV, P]       Φ_in (the chunk's anchor) and S_in

    Dᵅ_{tτ} = exp(ca_t − ca_τ)·1[τ ≤ t],  Dᶿ likewise;  ᾱ = exp(ca), θ̄ = exp(ct)
    Γγ_c[u, i] = 1[u − W < i ≤ u] γc_i,   Γγ_p[u, i] = 1[i > u + C − W] γp_i        (the band with carry, §C.2)
    Ψ = Dᶿ Γγ (Γγ without momentum),  Λ = Dᵅ diag(η) Ψ,  μ = Dᵅ diag(η) θ̄            (§C.3)
    E = K Aᵀ − V (l2) or −V (dot)                                                     (errors at the anchor, §C.1)
    Y     = diag(ᾱ) Q Aᵀ − diag(μ) Q Sᵀ − Σ_{b∈{c,p}} (Λ_b ⊙ Q K_bᵀ) E_b             (§C.5)
    Φ_out = ᾱ_l A − μ_l S − Σ_b E_bᵀ diag(Λ_b[l]) K_b,   S_out = θ̄_l S + Σ_b E_bᵀ diag(Ψ_b[l]) K_b

where l is the selected row. The difference form exp(ca_t − ca_τ) is the one CHUNKED.md §C.4.3 allows for finite
log gates (gates come from log σ of logits); masking happens before the exp, so no overflow reaches a gradient.
Needs W − 1 ≤ C (the carry lies in the previous chunk).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a, b):
  """a @ b in float32 at full precision (no TF32 / bf16 passes)."""
  return jnp.dot(a, b, precision=_HIGHEST, preferred_element_type=jnp.float32)


def _mm_tn(a, b):
  """aᵀ @ b."""
  return _mm(a.T, b)


def _mm_nt(a, b):
  """a @ bᵀ."""
  return _mm(a, b.T)


class Chunk(NamedTuple):
  """One chunk's inputs for one head and value tile (see the module docstring)."""
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


class _Coefficients(NamedTuple):
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


def _coefficients(x: Chunk, window: int, momentum: bool) -> _Coefficients:
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
    psi_c, psi_p = _mm(d_theta, gam_c), _mm(d_theta, gam_p)
    mu = jnp.sum(dah * theta_bar[None, :], axis=1)
  else:
    theta_bar = jnp.zeros_like(alpha_bar)
    d_theta = None
    psi_c, psi_p = gam_c, gam_p
    mu = jnp.zeros_like(alpha_bar)
  return _Coefficients(alpha_bar, theta_bar, d_alpha, d_theta, dah, band_c, band_p, psi_c, psi_p,
                       _mm(dah, psi_c), _mm(dah, psi_p), mu)


def _errors(x: Chunk, a, bias: str):
  """E_c, E_p [C, BV]: ∂ℓ/∂M at the anchor, e = A φ(k) − v (l2) or −v (dot)."""
  if bias == "dot":
    return -x.vc, -x.vp
  return _mm_nt(x.kc, a) - x.vc, _mm_nt(x.kp, a) - x.vp


def _row(sel, m):
  """Row l of m [C, n] (sel is one-hot over rows) → [n]."""
  return jnp.sum(sel[:, None] * m, axis=0)


def _at(sel, v):
  """v[l] for v [C] → scalar."""
  return jnp.sum(sel * v)


def chunk_forward(x: Chunk, a, s, *, window: int, momentum: bool, bias: str):
  """(Y [C, BV], Φ_out [BV, P], S_out [BV, P]) of one chunk from Φ_in = A and S_in = S."""
  co = _coefficients(x, window, momentum)
  e_c, e_p = _errors(x, a, bias)
  mix = _mm(co.lam_c * _mm_nt(x.q, x.kc), e_c) + _mm(co.lam_p * _mm_nt(x.q, x.kp), e_p)
  y = co.alpha_bar[:, None] * _mm_nt(x.q, a) - mix
  if momentum:
    y = y - co.mu[:, None] * _mm_nt(x.q, s)
  lam_c, lam_p = _row(x.sel, co.lam_c), _row(x.sel, co.lam_p)
  psi_c, psi_p = _row(x.sel, co.psi_c), _row(x.sel, co.psi_p)
  w_out = (_at(x.sel, co.alpha_bar) * a - _mm_tn(e_c * lam_c[:, None], x.kc)
           - _mm_tn(e_p * lam_p[:, None], x.kp))
  s_out = _mm_tn(e_c * psi_c[:, None], x.kc) + _mm_tn(e_p * psi_p[:, None], x.kp)
  if momentum:
    w_out = w_out - _at(x.sel, co.mu) * s
    s_out = s_out + _at(x.sel, co.theta_bar) * s
  return y, w_out, s_out


class ChunkGrads(NamedTuple):
  """Cotangents of one chunk's inputs; the "p" entries belong to the previous chunk's rows."""
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


def chunk_backward(x: Chunk, a, s, dy, dw, ds, *, window: int, momentum: bool, bias: str):
  """Reverse-mode step of `chunk_forward`: given dY, dΦ_out, dS_out → (ChunkGrads, dA, dS).

  Derivation (read off the forward formulas; M_b = Λ_b ⊙ Q K_bᵀ, l the selected row):
    dM_b = −dY E_bᵀ,  dΛ_b = dM_b ⊙ Q K_bᵀ (+ row l: −rowdot(E_b dΦ, K_b)),  d(QK_bᵀ) = dM_b ⊙ Λ_b
    dE_b = −M_bᵀ dY − diag(Λ_b[l]) K_b dΦᵀ + diag(Ψ_b[l]) K_b dSᵀ;   dV_b = −dE_b;   dA += dE_bᵀ K_b (l2)
    dΨ_b = (Dᵅ diag η)ᵀ dΛ_b (+ row l: rowdot(E_b dS, K_b));   dΓγ_b = Dᶿᵀ dΨ_b;   dγ_b = colsum(dΓγ_b ⊙ Γ_b)
    d(Dᵅ diag η) = Σ_b dΛ_b Ψ_bᵀ + dμ θ̄ᵀ;   dη = colsum(· ⊙ Dᵅ);   dDᶿ = Σ_b dΨ_b Γγ_bᵀ
    D = exp(c_t − c_τ): dc = rowsum(dD ⊙ D) − colsum(dD ⊙ D) (+ dᾱ ⊙ ᾱ for the cumulative product)
  """
  co = _coefficients(x, window, momentum)
  e_c, e_p = _errors(x, a, bias)
  sel = x.sel
  score_c, score_p = _mm_nt(x.q, x.kc), _mm_nt(x.q, x.kp)
  m_c, m_p = co.lam_c * score_c, co.lam_p * score_p
  lam_c, lam_p = _row(sel, co.lam_c), _row(sel, co.lam_p)
  psi_c, psi_p = _row(sel, co.psi_c), _row(sel, co.psi_p)

  # Y = diag(ᾱ) Q Aᵀ − diag(μ) Q Sᵀ − Σ_b M_b E_b
  dy_alpha = co.alpha_bar[:, None] * dy
  d_alpha_bar = jnp.sum(dy * _mm_nt(x.q, a), axis=1) + sel * jnp.sum(dw * a)
  dq = _mm(dy_alpha, a)
  da = _mm_tn(dy_alpha, x.q) + _at(sel, co.alpha_bar) * dw
  if momentum:
    dy_mu = co.mu[:, None] * dy
    d_mu = -jnp.sum(dy * _mm_nt(x.q, s), axis=1) - sel * jnp.sum(dw * s)
    d_theta_bar = sel * jnp.sum(ds * s)
    dq = dq - _mm(dy_mu, s)
    ds_in = -_mm_tn(dy_mu, x.q) - _at(sel, co.mu) * dw + _at(sel, co.theta_bar) * ds
  else:
    ds_in = jnp.zeros_like(s)

  def block(m, score, lam_coef, e, k, lam_l, psi_l):
    """Cotangents through one slot block b: (dΛ_b, dΨ_b (direct part), d(QK_bᵀ), dE_b, dK_b (direct))."""
    dm = -_mm_nt(dy, e)
    e_dw = _mm(e, dw)  # [C, P]
    e_ds = _mm(e, ds)
    d_lam = dm * score + sel[:, None] * (-jnp.sum(e_dw * k, axis=1))[None, :]
    d_psi_direct = sel[:, None] * jnp.sum(e_ds * k, axis=1)[None, :]
    d_score = dm * lam_coef
    de = -_mm_tn(m, dy) - lam_l[:, None] * _mm_nt(k, dw) + psi_l[:, None] * _mm_nt(k, ds)
    dk = -lam_l[:, None] * e_dw + psi_l[:, None] * e_ds
    return d_lam, d_psi_direct, d_score, de, dk

  dlam_c, dpsi_c, dscore_c, de_c, dk_c = block(m_c, score_c, co.lam_c, e_c, x.kc, lam_c, psi_c)
  dlam_p, dpsi_p, dscore_p, de_p, dk_p = block(m_p, score_p, co.lam_p, e_p, x.kp, lam_p, psi_p)
  dq = dq + _mm(dscore_c, x.kc) + _mm(dscore_p, x.kp)
  dk_c = dk_c + _mm_tn(dscore_c, x.q)
  dk_p = dk_p + _mm_tn(dscore_p, x.q)
  if bias == "l2":
    dk_c = dk_c + _mm(de_c, a)
    dk_p = dk_p + _mm(de_p, a)
    da = da + _mm_tn(de_c, x.kc) + _mm_tn(de_p, x.kp)

  # Λ_b = Dᵅ diag(η) Ψ_b,  μ = Dᵅ diag(η) θ̄
  d_dah = _mm_nt(dlam_c, co.psi_c) + _mm_nt(dlam_p, co.psi_p)
  dpsi_c = dpsi_c + _mm_tn(co.dah, dlam_c)
  dpsi_p = dpsi_p + _mm_tn(co.dah, dlam_p)
  if momentum:
    d_dah = d_dah + d_mu[:, None] * co.theta_bar[None, :]
    d_theta_bar = d_theta_bar + jnp.sum(co.dah * d_mu[:, None], axis=0)
    # Ψ_b = Dᶿ Γγ_b
    gam_c, gam_p = co.band_c * x.gc[None, :], co.band_p * x.gp[None, :]
    d_dtheta = _mm_nt(dpsi_c, gam_c) + _mm_nt(dpsi_p, gam_p)
    dgam_c, dgam_p = _mm_tn(co.d_theta, dpsi_c), _mm_tn(co.d_theta, dpsi_p)
    xt = d_dtheta * co.d_theta
    dct = jnp.sum(xt, axis=1) - jnp.sum(xt, axis=0) + d_theta_bar * co.theta_bar
  else:
    dgam_c, dgam_p = dpsi_c, dpsi_p
    dct = jnp.zeros_like(x.ct)
  deta = jnp.sum(d_dah * co.d_alpha, axis=0)
  xa = d_dah * x.eta[None, :] * co.d_alpha
  dca = jnp.sum(xa, axis=1) - jnp.sum(xa, axis=0) + d_alpha_bar * co.alpha_bar
  grads = ChunkGrads(q=dq, kc=dk_c, kp=dk_p, vc=-de_c, vp=-de_p,
                     gc=jnp.sum(dgam_c * co.band_c, axis=0), gp=jnp.sum(dgam_p * co.band_p, axis=0),
                     ca=dca, eta=deta, ct=dct)
  return grads, da, ds_in
