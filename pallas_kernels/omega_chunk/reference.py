"""Plain-JAX twin of the kernels: the same per-chunk math under ``lax.scan``, differentiated by JAX's autodiff.

It takes the kernels' prepared inputs (see ``kernel.omega_chunk``) and checks their backward — the hand-derived
one of the linear memory's state step and the in-kernel vjp of the MLP memories, each with JAX's autodiff of the
coefficients (which the kernels' wrapper batches over chunks). The memory op's xla path is the independent
reference for both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.omega_chunk.chunk_common import Chunk
from pallas_kernels.omega_chunk.kernel import BlockSizes, Static


def _blocks(x, chunk):
  """[T, ...] → this chunk's rows and the previous chunk's rows (zeros before the first), each [n, C, ...]."""
  cur = x.reshape((-1, chunk) + x.shape[1:])
  prev = jnp.concatenate([jnp.zeros_like(cur[:1]), cur[:-1]])
  return cur, prev


def omega_chunk_reference(q, k, v, gamma, log_alpha, eta, log_theta, sel, weights, states, *, kind: str, chunk: int,
                          window: int, momentum: bool, bias: str):
  """Same contract as ``kernel.omega_chunk``: (y [BH, T, V], Φ_out, S_out, anchor)."""
  static = Static(kind, chunk, window, momentum, bias, BlockSizes(v.shape[-1]), interpret=True, debug=False)
  f32 = lambda x: x.astype(jnp.float32)

  def one_head(q, k, v, gamma, log_alpha, eta, log_theta, weights, states):
    kc, kp = _blocks(f32(k), chunk)
    vc, vp = _blocks(f32(v), chunk)
    gc, gp = _blocks(f32(gamma), chunk)
    rows = lambda x: f32(x).reshape(-1, chunk)
    xs = Chunk(f32(q).reshape(kc.shape), kc, kp, vc, vp, gc, gp, rows(log_alpha), rows(eta), rows(log_theta),
               rows(sel))

    def body(carry, x):
      w, s = carry
      y, w_out, s_out = static.forward(static.prepare(x), w, s)
      return (w_out, s_out), (y, w)

    init = (tuple(map(f32, weights)), tuple(map(f32, states)))
    (w, s), (y, anchors) = jax.lax.scan(body, init, xs)
    return y.reshape(-1, y.shape[-1]), w, s, tuple(a[-1] for a in anchors)

  return jax.vmap(one_head)(q, k, v, gamma, log_alpha, eta, log_theta, tuple(weights), tuple(states))
