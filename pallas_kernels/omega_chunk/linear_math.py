"""One chunk of the linear Omega-rule memory, split into a state-free part and a state step.

The coefficient work does not depend on the fast weights: the matrices Λ_b, Ψ_b (C³ products of gate terms) and
the scores Q K_bᵀ. ``chunk_common.step_coefficients`` computes them, and the kernels' wrapper runs it for every
(head, chunk) at once, in parallel and outside the sequential loop; JAX's autodiff carries their cotangents back
to q, k and the gates. The kernels' loop runs only ``chunk_forward`` / ``chunk_backward``: the products with the
state, O(C·P·BV) per value tile, with a hand-derived backward. All in kernel-safe jax.numpy
(2-D matmuls, elementwise math, iotas, axis reductions: no slicing of values, no cumulative sums), so the same
code lowers to Triton and runs in interpret mode. All math is float32.

Notation (CHUNKED.md §C.0–§C.5; inputs and coefficients in ``chunk_common``), one head and one tile of BV value
rows: A, S [BV, P] are Φ_in (the chunk's anchor) and S_in; values v are minus r(k) for residual l2 memories;
l is the row ``sel`` marks (the chunk's last valid row).

    M_b = Λ_b ⊙ Q K_bᵀ [C, C],  λ_b = Λ_b[l],  ψ_b = Ψ_b[l] [C]   (b ∈ {c, p}: the chunk's and the previous slots)
    E_b = K_b Aᵀ − V_b (l2) or −V_b (dot)                                                (errors at the anchor, §C.1)
    Y     = diag(ᾱ) Q Aᵀ − diag(μ) Q Sᵀ − Σ_b M_b E_b                                                        (§C.5)
    Φ_out = ᾱ_l A − μ_l S − Σ_b E_bᵀ diag(λ_b) K_b,   S_out = θ̄_l S + Σ_b E_bᵀ diag(ψ_b) K_b
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.omega_chunk.chunk_common import at, mm, mm_nt, mm_tn


class LinearChunk(NamedTuple):
  """What the state step of one chunk reads (one head, one value tile), float32.

  q, kc, kp [C, P] and vc, vp [C, BV] as in ``Chunk``, then ``chunk_common.step_coefficients``: m_c, m_p [C, C]
  the scores M_b; over rows t: alpha_bar ᾱ, mu μ, theta_bar θ̄ [C]; over slots: lam_c, lam_p, psi_c, psi_p [C]
  (row l of Λ_b, Ψ_b); sel [C].
  """
  q: jax.Array
  kc: jax.Array
  kp: jax.Array
  vc: jax.Array
  vp: jax.Array
  m_c: jax.Array
  m_p: jax.Array
  alpha_bar: jax.Array
  mu: jax.Array
  theta_bar: jax.Array
  lam_c: jax.Array
  lam_p: jax.Array
  psi_c: jax.Array
  psi_p: jax.Array
  sel: jax.Array


def _errors(x: LinearChunk, a, bias: str):
  """E_c, E_p [C, BV]: ∂ℓ/∂M at the anchor, e = A φ(k) − v (l2) or −v (dot)."""
  if bias == "dot":
    return -x.vc, -x.vp
  return mm_nt(x.kc, a) - x.vc, mm_nt(x.kp, a) - x.vp


def chunk_forward(x: LinearChunk, a, s, *, momentum: bool, bias: str):
  """(Y [C, BV], Φ_out [BV, P], S_out [BV, P]) of one chunk from Φ_in = A and S_in = S."""
  e_c, e_p = _errors(x, a, bias)
  y = x.alpha_bar[:, None] * mm_nt(x.q, a) - mm(x.m_c, e_c) - mm(x.m_p, e_p)
  w_out = at(x.sel, x.alpha_bar) * a - mm_tn(e_c * x.lam_c[:, None], x.kc) - mm_tn(e_p * x.lam_p[:, None], x.kp)
  s_out = mm_tn(e_c * x.psi_c[:, None], x.kc) + mm_tn(e_p * x.psi_p[:, None], x.kp)
  if momentum:
    y = y - x.mu[:, None] * mm_nt(x.q, s)
    w_out = w_out - at(x.sel, x.mu) * s
    s_out = s_out + at(x.sel, x.theta_bar) * s
  return y, w_out, s_out


def chunk_backward(x: LinearChunk, a, s, dy, dw, ds, *, momentum: bool, bias: str):
  """Reverse-mode step of `chunk_forward`: given dY, dΦ_out, dS_out → (cotangents as a LinearChunk, dA, dS).

  Read off the forward formulas (U = Q Aᵀ, Z = Q Sᵀ; row vectors broadcast over BV):
    dᾱ = rowsum(dY ⊙ U) + sel ⟨dΦ, A⟩,  dμ = −rowsum(dY ⊙ Z) − sel ⟨dΦ, S⟩,  dθ̄ = sel ⟨dS, S⟩
    dQ = diag(ᾱ) dY A − diag(μ) dY S,  dA = (diag(ᾱ) dY)ᵀ Q + ᾱ_l dΦ,  dS_in = −(diag(μ) dY)ᵀ Q − μ_l dΦ + θ̄_l dS
    dM_b = −dY E_bᵀ,  dE_b = −M_bᵀ dY − diag(λ_b) K_b dΦᵀ + diag(ψ_b) K_b dSᵀ
    dλ_b = −rowsum(E_b ⊙ K_b dΦᵀ),  dψ_b = rowsum(E_b ⊙ K_b dSᵀ),  dK_b = −diag(λ_b) E_b dΦ + diag(ψ_b) E_b dS
    l2: dK_b += dE_b A,  dA += dE_bᵀ K_b;   dV_b = −dE_b
  """
  e_c, e_p = _errors(x, a, bias)
  sel = x.sel
  dy_alpha = x.alpha_bar[:, None] * dy
  d_alpha_bar = jnp.sum(dy * mm_nt(x.q, a), axis=1) + sel * jnp.sum(dw * a)
  dq = mm(dy_alpha, a)
  da = mm_tn(dy_alpha, x.q) + at(sel, x.alpha_bar) * dw
  if momentum:
    dy_mu = x.mu[:, None] * dy
    d_mu = -jnp.sum(dy * mm_nt(x.q, s), axis=1) - sel * jnp.sum(dw * s)
    d_theta_bar = sel * jnp.sum(ds * s)
    dq = dq - mm(dy_mu, s)
    ds_in = -mm_tn(dy_mu, x.q) - at(sel, x.mu) * dw + at(sel, x.theta_bar) * ds
  else:
    d_mu = d_theta_bar = jnp.zeros_like(x.mu)
    ds_in = jnp.zeros_like(s)

  def block(m, e, k, lam, psi):
    """(dM_b, dE_b, dK_b (direct), dλ_b, dψ_b) through one slot block."""
    k_dw, k_ds = mm_nt(k, dw), mm_nt(k, ds)  # [C, BV]
    de = -mm_tn(m, dy) - lam[:, None] * k_dw + psi[:, None] * k_ds
    dk = -lam[:, None] * mm(e, dw) + psi[:, None] * mm(e, ds)
    return -mm_nt(dy, e), de, dk, -jnp.sum(e * k_dw, axis=1), jnp.sum(e * k_ds, axis=1)

  dm_c, de_c, dk_c, dlam_c, dpsi_c = block(x.m_c, e_c, x.kc, x.lam_c, x.psi_c)
  dm_p, de_p, dk_p, dlam_p, dpsi_p = block(x.m_p, e_p, x.kp, x.lam_p, x.psi_p)
  if bias == "l2":
    dk_c = dk_c + mm(de_c, a)
    dk_p = dk_p + mm(de_p, a)
    da = da + mm_tn(de_c, x.kc) + mm_tn(de_p, x.kp)
  grads = LinearChunk(q=dq, kc=dk_c, kp=dk_p, vc=-de_c, vp=-de_p, m_c=dm_c, m_p=dm_p, alpha_bar=d_alpha_bar,
                      mu=d_mu, theta_bar=d_theta_bar, lam_c=dlam_c, lam_p=dlam_p, psi_c=dpsi_c, psi_p=dpsi_p,
                      sel=None)
  return grads, da, ds_in
