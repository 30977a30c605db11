"""One chunk of the linear Omega-rule memory, forward and hand-derived backward, in kernel-safe jax.numpy.

These functions are the bodies of the Pallas kernels in ``kernel.py`` (called per chunk inside the kernels'
sequential loop) and of the plain-JAX scan in ``reference.py``. They use only 2-D matmuls, elementwise math,
iotas and axis reductions — no slicing of values, no concatenation, no cumulative sums — so the same code
lowers to Triton and runs in interpret mode. All math is float32.

Notation (CHUNKED.md §C.0–§C.5; inputs and coefficients in ``chunk_common``), one head and one tile of BV value
rows: A, S [BV, P] are Φ_in (the chunk's anchor) and S_in; values v are minus r(k) for residual l2 memories.

    E = K Aᵀ − V (l2) or −V (dot)                                                     (errors at the anchor, §C.1)
    Y     = diag(ᾱ) Q Aᵀ − diag(μ) Q Sᵀ − Σ_{b∈{c,p}} (Λ_b ⊙ Q K_bᵀ) E_b             (§C.5)
    Φ_out = ᾱ_l A − μ_l S − Σ_b E_bᵀ diag(Λ_b[l]) K_b,   S_out = θ̄_l S + Σ_b E_bᵀ diag(Ψ_b[l]) K_b

where l is the row ``sel`` marks (the chunk's last valid row).
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.omega_chunk.chunk_common import Chunk, at, coefficients, mm, mm_nt, mm_tn, row


def _errors(x: Chunk, a, bias: str):
  """E_c, E_p [C, BV]: ∂ℓ/∂M at the anchor, e = A φ(k) − v (l2) or −v (dot)."""
  if bias == "dot":
    return -x.vc, -x.vp
  return mm_nt(x.kc, a) - x.vc, mm_nt(x.kp, a) - x.vp


def chunk_forward(x: Chunk, a, s, *, window: int, momentum: bool, bias: str):
  """(Y [C, BV], Φ_out [BV, P], S_out [BV, P]) of one chunk from Φ_in = A and S_in = S."""
  co = coefficients(x, window, momentum)
  e_c, e_p = _errors(x, a, bias)
  mix = mm(co.lam_c * mm_nt(x.q, x.kc), e_c) + mm(co.lam_p * mm_nt(x.q, x.kp), e_p)
  y = co.alpha_bar[:, None] * mm_nt(x.q, a) - mix
  if momentum:
    y = y - co.mu[:, None] * mm_nt(x.q, s)
  lam_c, lam_p = row(x.sel, co.lam_c), row(x.sel, co.lam_p)
  psi_c, psi_p = row(x.sel, co.psi_c), row(x.sel, co.psi_p)
  w_out = (at(x.sel, co.alpha_bar) * a - mm_tn(e_c * lam_c[:, None], x.kc)
           - mm_tn(e_p * lam_p[:, None], x.kp))
  s_out = mm_tn(e_c * psi_c[:, None], x.kc) + mm_tn(e_p * psi_p[:, None], x.kp)
  if momentum:
    w_out = w_out - at(x.sel, co.mu) * s
    s_out = s_out + at(x.sel, co.theta_bar) * s
  return y, w_out, s_out


def chunk_backward(x: Chunk, a, s, dy, dw, ds, *, window: int, momentum: bool, bias: str):
  """Reverse-mode step of `chunk_forward`: given dY, dΦ_out, dS_out → (cotangents as a Chunk, dA, dS).

  Derivation (read off the forward formulas; M_b = Λ_b ⊙ Q K_bᵀ, l the selected row):
    dM_b = −dY E_bᵀ,  dΛ_b = dM_b ⊙ Q K_bᵀ (+ row l: −rowdot(E_b dΦ, K_b)),  d(QK_bᵀ) = dM_b ⊙ Λ_b
    dE_b = −M_bᵀ dY − diag(Λ_b[l]) K_b dΦᵀ + diag(Ψ_b[l]) K_b dSᵀ;   dV_b = −dE_b;   dA += dE_bᵀ K_b (l2)
    dΨ_b = (Dᵅ diag η)ᵀ dΛ_b (+ row l: rowdot(E_b dS, K_b));   dΓγ_b = Dᶿᵀ dΨ_b;   dγ_b = colsum(dΓγ_b ⊙ Γ_b)
    d(Dᵅ diag η) = Σ_b dΛ_b Ψ_bᵀ + dμ θ̄ᵀ;   dη = colsum(· ⊙ Dᵅ);   dDᶿ = Σ_b dΨ_b Γγ_bᵀ
    D = exp(c_t − c_τ): dc = rowsum(dD ⊙ D) − colsum(dD ⊙ D) (+ dᾱ ⊙ ᾱ for the cumulative product)
  """
  co = coefficients(x, window, momentum)
  e_c, e_p = _errors(x, a, bias)
  sel = x.sel
  score_c, score_p = mm_nt(x.q, x.kc), mm_nt(x.q, x.kp)
  m_c, m_p = co.lam_c * score_c, co.lam_p * score_p
  lam_c, lam_p = row(sel, co.lam_c), row(sel, co.lam_p)
  psi_c, psi_p = row(sel, co.psi_c), row(sel, co.psi_p)

  # Y = diag(ᾱ) Q Aᵀ − diag(μ) Q Sᵀ − Σ_b M_b E_b
  dy_alpha = co.alpha_bar[:, None] * dy
  d_alpha_bar = jnp.sum(dy * mm_nt(x.q, a), axis=1) + sel * jnp.sum(dw * a)
  dq = mm(dy_alpha, a)
  da = mm_tn(dy_alpha, x.q) + at(sel, co.alpha_bar) * dw
  if momentum:
    dy_mu = co.mu[:, None] * dy
    d_mu = -jnp.sum(dy * mm_nt(x.q, s), axis=1) - sel * jnp.sum(dw * s)
    d_theta_bar = sel * jnp.sum(ds * s)
    dq = dq - mm(dy_mu, s)
    ds_in = -mm_tn(dy_mu, x.q) - at(sel, co.mu) * dw + at(sel, co.theta_bar) * ds
  else:
    ds_in = jnp.zeros_like(s)

  def block(m, score, lam_coef, e, k, lam_l, psi_l):
    """Cotangents through one slot block b: (dΛ_b, dΨ_b (direct part), d(QK_bᵀ), dE_b, dK_b (direct))."""
    dm = -mm_nt(dy, e)
    e_dw = mm(e, dw)  # [C, P]
    e_ds = mm(e, ds)
    d_lam = dm * score + sel[:, None] * (-jnp.sum(e_dw * k, axis=1))[None, :]
    d_psi_direct = sel[:, None] * jnp.sum(e_ds * k, axis=1)[None, :]
    d_score = dm * lam_coef
    de = -mm_tn(m, dy) - lam_l[:, None] * mm_nt(k, dw) + psi_l[:, None] * mm_nt(k, ds)
    dk = -lam_l[:, None] * e_dw + psi_l[:, None] * e_ds
    return d_lam, d_psi_direct, d_score, de, dk

  dlam_c, dpsi_c, dscore_c, de_c, dk_c = block(m_c, score_c, co.lam_c, e_c, x.kc, lam_c, psi_c)
  dlam_p, dpsi_p, dscore_p, de_p, dk_p = block(m_p, score_p, co.lam_p, e_p, x.kp, lam_p, psi_p)
  dq = dq + mm(dscore_c, x.kc) + mm(dscore_p, x.kp)
  dk_c = dk_c + mm_tn(dscore_c, x.q)
  dk_p = dk_p + mm_tn(dscore_p, x.q)
  if bias == "l2":
    dk_c = dk_c + mm(de_c, a)
    dk_p = dk_p + mm(de_p, a)
    da = da + mm_tn(de_c, x.kc) + mm_tn(de_p, x.kp)

  # Λ_b = Dᵅ diag(η) Ψ_b,  μ = Dᵅ diag(η) θ̄
  d_dah = mm_nt(dlam_c, co.psi_c) + mm_nt(dlam_p, co.psi_p)
  dpsi_c = dpsi_c + mm_tn(co.dah, dlam_c)
  dpsi_p = dpsi_p + mm_tn(co.dah, dlam_p)
  if momentum:
    d_dah = d_dah + d_mu[:, None] * co.theta_bar[None, :]
    d_theta_bar = d_theta_bar + jnp.sum(co.dah * d_mu[:, None], axis=0)
    # Ψ_b = Dᶿ Γγ_b
    gam_c, gam_p = co.band_c * x.gc[None, :], co.band_p * x.gp[None, :]
    d_dtheta = mm_nt(dpsi_c, gam_c) + mm_nt(dpsi_p, gam_p)
    dgam_c, dgam_p = mm_tn(co.d_theta, dpsi_c), mm_tn(co.d_theta, dpsi_p)
    xt = d_dtheta * co.d_theta
    dct = jnp.sum(xt, axis=1) - jnp.sum(xt, axis=0) + d_theta_bar * co.theta_bar
  else:
    dgam_c, dgam_p = dpsi_c, dpsi_p
    dct = jnp.zeros_like(x.ct)
  deta = jnp.sum(d_dah * co.d_alpha, axis=0)
  xa = d_dah * x.eta[None, :] * co.d_alpha
  dca = jnp.sum(xa, axis=1) - jnp.sum(xa, axis=0) + d_alpha_bar * co.alpha_bar
  grads = Chunk(q=dq, kc=dk_c, kp=dk_p, vc=-de_c, vp=-de_p,
                     gc=jnp.sum(dgam_c * co.band_c, axis=0), gp=jnp.sum(dgam_p * co.band_p, axis=0),
                     ca=dca, eta=deta, ct=dct, sel=None)
  return grads, da, ds_in
