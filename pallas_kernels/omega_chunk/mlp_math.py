"""One chunk of the MLP Omega-rule memories (``mlp``, ``gated_mlp``), forward in kernel-safe jax.numpy.

The dual form of CHUNKED.md §C.6 for one head, with the slots in two blocks b ∈ {c, p} (``chunk_common``).
Factors at the anchor A = (A1 [V, F], A2 [F, P][, A3 [F, P]]) for each block's slot rows K_b (φ(k)):

    mlp:        H = K A2ᵀ, Z = gelu(H), E = Z A1ᵀ − V (l2) or −V (dot), Δ = (E A1) ⊙ gelu′(H)
    gated_mlp:  H = K A2ᵀ, H′ = K A3ᵀ, Z = silu(H) ⊙ H′, D = E A1, Δ = D ⊙ H′ ⊙ silu′(H), Δ′ = D ⊙ silu(H)
    factor pairs (𝓛, 𝓡): W1 (E, Z), W2 (Δ, K), W3 (Δ′, K)

Reads, layer 2 first, each row under its own position's weights (no Φ_t formed):

    read(X; Φ_in, S_in, pairs) = diag(ᾱ) X Φ_inᵀ − diag(μ) X S_inᵀ − Σ_b (Λ_b ⊙ X 𝓡_bᵀ) 𝓛_b
    Hq = read(Q; W2),  Zq = gelu(Hq)  (gated: silu(Hq) ⊙ read(Q; W3)),  Y = read(Zq; W1)

W2 and W3 have 𝓡_b = K_b, so their scores Λ_b ⊙ Q K_bᵀ are the state-free M_b that the kernels' wrapper
computes before the loop (``chunk_common.step_coefficients``, with the Λ_b that layer 1's scores need).
End state per matrix: Φ_out = ᾱ_l Φ_in − μ_l S_in − Σ_b 𝓛_bᵀ diag(λ_b) 𝓡_b, S_out = θ̄_l S_in +
Σ_b 𝓛_bᵀ diag(ψ_b) 𝓡_b. The backward is JAX's vjp of this function, traced inside the backward kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from atlas_jax.memory.fast_weights import gelu_and_grad, silu_grad
from pallas_kernels.omega_chunk.chunk_common import at, mm, mm_nt, mm_tn
from pallas_kernels.omega_chunk.linear_math import LinearChunk


# What the state step of one chunk reads (one head), float32: ``LinearChunk``'s fields with the full Λ_c, Λ_p
# [C, C] (lam_mat_c, lam_mat_p) before sel.
MlpChunk = NamedTuple("MlpChunk", [(name, jax.Array) for name in LinearChunk._fields[:-1]]
                      + [("lam_mat_c", jax.Array), ("lam_mat_p", jax.Array), ("sel", jax.Array)])


def _factors(kind: str, bias: str, weights, k, v):
  """{name: (𝓛, 𝓡)} for slot rows k [C, P], v [C, V] at the anchor weights (W1, W2[, W3])."""
  a1, a2 = weights[0], weights[1]
  h = mm_nt(k, a2)
  if kind == "mlp":
    z, dz = gelu_and_grad(h)
  else:
    h3 = mm_nt(k, weights[2])
    z = jax.nn.sigmoid(h) * h * h3
  e = -v if bias == "dot" else mm_nt(z, a1) - v
  d = mm(e, a1)  # rows A1ᵀ e_i [C, F]
  if kind == "mlp":
    return ((e, z), (d * dz, k))
  return ((e, z), (d * h3 * silu_grad(h), k), (d * jax.nn.sigmoid(h) * h, k))


def chunk_forward(x: MlpChunk, weights, states, *, kind: str, momentum: bool, bias: str):
  """(Y [C, V], Φ_out, S_out) of one chunk; weights and states are tuples (W1, W2[, W3]) of float32 matrices."""
  fac_c = _factors(kind, bias, weights, x.kc, x.vc)
  fac_p = _factors(kind, bias, weights, x.kp, x.vp)

  def read(i, inputs, score_c, score_p):
    out = x.alpha_bar[:, None] * mm_nt(inputs, weights[i]) - mm(score_c, fac_c[i][0]) - mm(score_p, fac_p[i][0])
    if momentum:
      out = out - x.mu[:, None] * mm_nt(inputs, states[i])
    return out

  h = read(1, x.q, x.m_c, x.m_p)
  if kind == "mlp":
    zq = gelu_and_grad(h)[0]
  else:
    zq = jax.nn.sigmoid(h) * h * read(2, x.q, x.m_c, x.m_p)
  y = read(0, zq, x.lam_mat_c * mm_nt(zq, fac_c[0][1]), x.lam_mat_p * mm_nt(zq, fac_p[0][1]))

  slot_sum = lambda coef_c, coef_p, i: (mm_tn(fac_c[i][0] * coef_c[:, None], fac_c[i][1])
                                        + mm_tn(fac_p[i][0] * coef_p[:, None], fac_p[i][1]))
  new_w, new_s = [], []
  for i, (w, s) in enumerate(zip(weights, states)):
    w_out = at(x.sel, x.alpha_bar) * w - slot_sum(x.lam_c, x.lam_p, i)
    s_out = slot_sum(x.psi_c, x.psi_p, i)
    if momentum:
      w_out = w_out - at(x.sel, x.mu) * s
      s_out = s_out + at(x.sel, x.theta_bar) * s
    new_w.append(w_out)
    new_s.append(s_out)
  return y, tuple(new_w), tuple(new_s)


def chunk_backward(x: MlpChunk, weights, states, dy, dweights, dstates, **static):
  """(cotangents as an MlpChunk, dΦ_in, dS_in) of one chunk: the vjp of `chunk_forward`, recomputed from the saved
  Φ_in, S_in."""
  _, pull = jax.vjp(lambda x, w, s: chunk_forward(x, w, s, **static), x, weights, states)
  gx, dw, ds = pull((dy, tuple(dweights), tuple(dstates)))
  return gx, dw, ds
