"""Plain-JAX twin of the linear kernels: the same per-chunk math (``linear_math``) under ``lax.scan``.

It takes the kernels' prepared inputs (see ``linear.omega_linear``) and is differentiated by JAX's autodiff, so
it checks the kernels' hand-written backward; the memory op's xla path is the independent reference for both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.omega_chunk.linear_math import Chunk, chunk_forward


def _blocks(x, chunk):
  """[T, ...] → this chunk's rows and the previous chunk's rows (zeros before the first), each [n, C, ...]."""
  cur = x.reshape((-1, chunk) + x.shape[1:])
  prev = jnp.concatenate([jnp.zeros_like(cur[:1]), cur[:-1]])
  return cur, prev


def omega_linear_reference(q, k, v, gamma, ca, eta, ct, sel, w0, s0, *, chunk: int, window: int,
                           momentum: bool, bias: str):
  """Same contract as ``linear.omega_linear``: (y [BH, T, V], Φ_out, S_out, anchor [BH, V, P])."""

  def one_head(q, k, v, gamma, ca, eta, ct, w0, s0):
    f32 = lambda x: x.astype(jnp.float32)
    kc, kp = _blocks(f32(k), chunk)
    vc, vp = _blocks(f32(v), chunk)
    gc, gp = _blocks(f32(gamma), chunk)
    rows = lambda x: f32(x).reshape(-1, chunk)
    xs = Chunk(f32(q).reshape(kc.shape), kc, kp, vc, vp, gc, gp, rows(ca), rows(eta), rows(ct), rows(sel))

    def body(carry, x):
      w, s = carry
      y, w_out, s_out = chunk_forward(x, w, s, window=window, momentum=momentum, bias=bias)
      return (w_out, s_out), (y, w)

    (w, s), (y, anchors) = jax.lax.scan(body, (f32(w0), f32(s0)), xs)
    return y.reshape(-1, y.shape[-1]), w, s, anchors[-1]

  return jax.vmap(one_head)(q, k, v, gamma, ca, eta, ct, w0, s0)
