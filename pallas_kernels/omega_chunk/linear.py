"""Pallas kernels for the linear Omega-rule memory: a forward and a backward kernel joined by ``jax.custom_vjp``.

One program per (batch·head, value tile) walks the chunks in order (forward) or in reverse (backward), keeping
Φ and S for its BV value rows in float32 on chip. Value rows are independent in a linear memory — row v of Φ
only sees column v of the errors E = K Aᵀ − V — so tiling V needs no communication. Per chunk the programs run
``linear_math.chunk_forward`` / ``chunk_backward``.

What the forward saves for the backward: Φ_in (and S_in with momentum) at the start of every chunk, float32,
[BH, n, V, P] — the kernel backward recomputes everything else (coefficients, errors, scores) per chunk. A
primal call outside differentiation saves nothing. Gradients of q, k, γ and the gates are reduced over value
tiles outside the kernel (each tile writes its partial sum).

Shapes (BH = batch·heads, T a multiple of C, P and V as prepared by ``ops.py``):
    q, k [BH, T, P] (φ applied), v [BH, T, V], gamma, ca, eta, ct [BH, T] float32, sel [T], w0, s0 [BH, V, P].
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.omega_chunk.linear_math import Chunk, chunk_backward, chunk_forward


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiling of the linear kernels: ``value`` = BV value rows per program (divides V); Triton launch knobs."""
  value: int
  num_warps: int = 4
  num_stages: int = 1

  @classmethod
  def get_default(cls, value_dim: int, feature_dim: int, dtype=jnp.float32) -> "BlockSizes":
    """BV = 64 when it divides V (V itself otherwise): two [BV, P] float32 states stay small enough for the
    register file up to P ≈ 128; larger P (polynomial φ) gets 8 warps. ``dtype`` is the inputs' dtype
    (inputs are upcast on load, so it does not change the tiling today)."""
    del dtype
    value = 64 if value_dim % 64 == 0 else value_dim
    return cls(value=value, num_warps=4 if feature_dim <= 128 else 8)


def _check(q, k, v, gamma, w0, chunk: int, block: BlockSizes):
  bh, length, p = q.shape
  value = v.shape[-1]
  if k.shape != q.shape or v.shape[:2] != (bh, length) or gamma.shape != (bh, length):
    raise ValueError(f"omega_linear: expected q, k [BH, T, P], v [BH, T, V], gates [BH, T]; got q {q.shape}, "
                     f"k {k.shape}, v {v.shape}, gamma {gamma.shape}.")
  if length % chunk:
    raise ValueError(f"omega_linear: T={length} must be a multiple of the chunk size C={chunk} (pad first).")
  if w0.shape != (bh, value, p):
    raise ValueError(f"omega_linear: w0 has shape {w0.shape}; expected [BH, V, P] = {(bh, value, p)}.")
  if value % block.value:
    raise ValueError(f"omega_linear: block_sizes.value={block.value} must divide V={value}.")


def _load_chunk(refs, j, chunk, *, previous):
  """Tiles of chunk j (or of chunk j − 1, zeros for j = 0) from the kernel refs."""
  q_ref, k_ref, v_ref, gamma_ref, ca_ref, eta_ref, ct_ref, sel_ref = refs
  rows = pl.ds(jnp.maximum(j - 1, 0) * chunk if previous else j * chunk, chunk)
  keep = jnp.minimum(j, 1).astype(jnp.float32) if previous else 1.0  # zeros before the first chunk
  f32 = lambda x: x.astype(jnp.float32)
  k = f32(k_ref[rows, :]) * keep  # [C, P]
  v = f32(v_ref[rows, :]) * keep  # [C, BV]
  gamma = f32(gamma_ref[rows]) * keep  # [C]
  if previous:
    return k, v, gamma
  return (f32(q_ref[rows, :]), k, v, gamma, f32(ca_ref[rows]), f32(eta_ref[rows]), f32(ct_ref[rows]),
          f32(sel_ref[rows]))


def _chunk(refs, j, chunk) -> Chunk:
  q, kc, vc, gc, ca, eta, ct, sel = _load_chunk(refs, j, chunk, previous=False)
  kp, vp, gp = _load_chunk(refs, j, chunk, previous=True)
  return Chunk(q, kc, kp, vc, vp, gc, gp, ca, eta, ct, sel)


def _forward_kernel(*refs, chunk, window, momentum, bias, save_states):
  inputs, (w0_ref, s0_ref), outs = refs[:8], refs[8:10], refs[10:]
  y_ref, w_ref, s_ref, anchor_ref = outs[:4]
  n = y_ref.shape[0] // chunk

  def step(j, w, s):
    if save_states:
      outs[4][j] = w
      if momentum:
        outs[5][j] = s
    y, w, s = chunk_forward(_chunk(inputs, j, chunk), w, s, window=window, momentum=momentum, bias=bias)
    y_ref[pl.ds(j * chunk, chunk), :] = y.astype(y_ref.dtype)
    return w, s

  init = (w0_ref[...].astype(jnp.float32), s0_ref[...].astype(jnp.float32))  # [BV, P] each
  w, s = jax.lax.fori_loop(0, n - 1, lambda j, carry: step(j, *carry), init)
  anchor_ref[...] = w  # Φ_in of the last chunk: the state's anchor
  w, s = step(n - 1, w, s)
  w_ref[...] = w
  s_ref[...] = s


def _backward_kernel(*refs, chunk, window, momentum, bias):
  inputs = refs[:8]
  w_states_ref, s_states_ref, dy_ref, dw_ref, ds_ref, d_anchor_ref = refs[8:14]
  dq_ref, dk_ref, dv_ref, dgamma_ref, dca_ref, deta_ref, dct_ref, dw0_ref, ds0_ref = refs[14:]
  n = dy_ref.shape[0] // chunk

  def body(i, carry):
    j = n - 1 - i
    dw, ds, pend_k, pend_v, pend_g = carry
    x = _chunk(inputs, j, chunk)
    a = w_states_ref[j]
    s = s_states_ref[j] if momentum else jnp.zeros_like(a)
    rows = pl.ds(j * chunk, chunk)
    dy = dy_ref[rows, :].astype(jnp.float32)
    g, da, ds_in = chunk_backward(x, a, s, dy, dw, ds, window=window, momentum=momentum, bias=bias)
    da = da + jnp.maximum(j - (n - 2), 0).astype(jnp.float32) * d_anchor_ref[...]  # the anchor output is Φ_in of the last chunk
    dq_ref[rows, :] = g.q
    dk_ref[rows, :] = g.kc + pend_k
    dv_ref[rows, :] = (g.vc + pend_v).astype(dv_ref.dtype)
    dgamma_ref[rows] = g.gc + pend_g
    dca_ref[rows] = g.ca
    deta_ref[rows] = g.eta
    dct_ref[rows] = g.ct
    return da, ds_in, g.kp, g.vp, g.gp

  c, p = dq_ref.shape[0] // n, dq_ref.shape[1]
  bv = dv_ref.shape[1]
  zeros = jnp.zeros
  init = (dw_ref[...], ds_ref[...], zeros((c, p), jnp.float32), zeros((c, bv), jnp.float32),
          zeros((c,), jnp.float32))
  dw, ds, *_ = jax.lax.fori_loop(0, n, body, init)
  dw0_ref[...] = dw
  ds0_ref[...] = ds


def _specs(block: BlockSizes):
  """BlockSpecs per (bh, value tile) program: whole sequences; value-indexed arrays take their BV tile."""
  rows_p = lambda t, p: pl.BlockSpec((None, t, p), lambda b, vt: (b, 0, 0))
  rows_v = lambda t: pl.BlockSpec((None, t, block.value), lambda b, vt: (b, 0, vt))
  gate = lambda t: pl.BlockSpec((None, t), lambda b, vt: (b, 0))
  state = lambda p: pl.BlockSpec((None, block.value, p), lambda b, vt: (b, vt, 0))
  return rows_p, rows_v, gate, state


def _input_specs(block: BlockSizes, length: int, p: int):
  """Specs of (q, k, v, gamma, ca, eta, ct, sel)."""
  rows_p, rows_v, gate, _ = _specs(block)
  return ([rows_p(length, p), rows_p(length, p), rows_v(length)] + [gate(length)] * 4
          + [pl.BlockSpec((length,), lambda b, vt: (0,))])


def _call(kernel, out_shape, in_specs, out_specs, grid, block, interpret, debug):
  return pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_specs, interpret=interpret,
      debug=debug, compiler_params=pltriton.CompilerParams(num_warps=block.num_warps, num_stages=block.num_stages),
  )


def _forward(q, k, v, gamma, ca, eta, ct, sel, w0, s0, *, chunk, window, momentum, bias, block, interpret,
             debug, save_states):
  """(y, Φ_out, S_out, anchor[, Φ_in per chunk[, S_in per chunk]])."""
  bh, length, p = q.shape
  value = v.shape[-1]
  n = length // chunk
  _, rows_v, _, state = _specs(block)
  in_specs = _input_specs(block, length, p) + [state(p), state(p)]
  f32 = jnp.float32
  y_dtype = f32 if q.dtype == jnp.float64 else q.dtype
  out_shape = [jax.ShapeDtypeStruct((bh, length, value), y_dtype)] + [jax.ShapeDtypeStruct((bh, value, p), f32)] * 3
  out_specs = [rows_v(length), state(p), state(p), state(p)]
  if save_states:
    for _ in range(2 if momentum else 1):
      out_shape.append(jax.ShapeDtypeStruct((bh, n, value, p), f32))
      out_specs.append(pl.BlockSpec((None, n, block.value, p), lambda b, vt: (b, 0, vt, 0)))
  kernel = functools.partial(_forward_kernel, chunk=chunk, window=window, momentum=momentum, bias=bias,
                             save_states=save_states)
  return _call(kernel, out_shape, in_specs, out_specs, (bh, value // block.value), block, interpret, debug)(
      q, k, v, gamma, ca, eta, ct, sel, w0, s0)


_STATIC = (10, 11, 12, 13, 14, 15, 16)  # chunk, window, momentum, bias, block, interpret, debug


@functools.partial(jax.custom_vjp, nondiff_argnums=_STATIC)
def _omega_linear(q, k, v, gamma, ca, eta, ct, sel, w0, s0, chunk, window, momentum, bias, block, interpret,
                  debug):
  return tuple(_forward(q, k, v, gamma, ca, eta, ct, sel, w0, s0, chunk=chunk, window=window, momentum=momentum,
                        bias=bias, block=block, interpret=interpret, debug=debug, save_states=False))


def _omega_linear_fwd(q, k, v, gamma, ca, eta, ct, sel, w0, s0, chunk, window, momentum, bias, block, interpret,
                      debug):
  outs = _forward(q, k, v, gamma, ca, eta, ct, sel, w0, s0, chunk=chunk, window=window, momentum=momentum,
                  bias=bias, block=block, interpret=interpret, debug=debug, save_states=True)
  w_states = outs[4]
  s_states = outs[5] if momentum else None
  residuals = (q, k, v, gamma, ca, eta, ct, sel, w_states, s_states)
  return tuple(outs[:4]), residuals


def _omega_linear_bwd(chunk, window, momentum, bias, block, interpret, debug, residuals, cotangents):
  q, k, v, gamma, ca, eta, ct, sel, w_states, s_states = residuals
  dy, dw, ds, d_anchor = cotangents
  bh, length, p = q.shape
  value = v.shape[-1]
  tiles = value // block.value
  _, rows_v, _, state = _specs(block)
  chunk_state = pl.BlockSpec((None, length // chunk, block.value, p), lambda b, vt: (b, 0, vt, 0))
  if s_states is None:
    s_states = w_states[:, :1]  # unused without momentum; any array of the right layout
    s_spec = pl.BlockSpec((None, 1, block.value, p), lambda b, vt: (b, 0, vt, 0))
  else:
    s_spec = chunk_state
  in_specs = _input_specs(block, length, p) + [chunk_state, s_spec, rows_v(length), state(p), state(p), state(p)]
  partial_rows = lambda width: pl.BlockSpec((None, None, length, width), lambda b, vt: (b, vt, 0, 0))
  partial_gate = pl.BlockSpec((None, None, length), lambda b, vt: (b, vt, 0))
  f32 = jnp.float32
  out_shape = [jax.ShapeDtypeStruct((bh, tiles, length, p), f32), jax.ShapeDtypeStruct((bh, tiles, length, p), f32),
               jax.ShapeDtypeStruct((bh, length, value), f32)]
  out_shape += [jax.ShapeDtypeStruct((bh, tiles, length), f32)] * 4
  out_shape += [jax.ShapeDtypeStruct((bh, value, p), f32)] * 2
  out_specs = [partial_rows(p), partial_rows(p), rows_v(length)] + [partial_gate] * 4 + [state(p), state(p)]
  kernel = functools.partial(_backward_kernel, chunk=chunk, window=window, momentum=momentum, bias=bias)
  f = lambda x: x.astype(f32)
  outs = _call(kernel, out_shape, in_specs, out_specs, (bh, tiles), block, interpret, debug)(
      q, k, v, gamma, ca, eta, ct, sel, w_states, s_states, dy, f(dw), f(ds), f(d_anchor))
  dq, dk, dv, dgamma, dca, deta, dct, dw0, ds0 = outs
  total = lambda x: jnp.sum(x, axis=1)
  cast = lambda g, like: g.astype(like.dtype)
  return (cast(total(dq), q), cast(total(dk), k), cast(dv, v), cast(total(dgamma), gamma), cast(total(dca), ca),
          cast(total(deta), eta), cast(total(dct), ct), jnp.zeros_like(sel), dw0, ds0)


_omega_linear.defvjp(_omega_linear_fwd, _omega_linear_bwd)


def omega_linear(q, k, v, gamma, ca, eta, ct, sel, w0, s0, *, chunk: int, window: int, momentum: bool,
                 bias: str, block_sizes: BlockSizes | None = None, interpret: bool | None = None,
                 debug: bool = False):
  """The linear Omega-rule memory over prepared inputs → (y [BH, T, V], Φ_out, S_out, anchor [BH, V, P]).

  Inputs (see the module docstring; ``ops.py`` prepares them from the memory op's arguments): q, k are φ(q),
  φ(k); v the values (minus r(k) for residual l2); ca, ct the within-chunk cumulative log α, log θ; sel marks
  each chunk's last valid row. Differentiable in every input but sel.

  interpret: run the kernels in the Pallas interpreter (default: True on CPU, where nothing else runs).
  """
  block = block_sizes or BlockSizes.get_default(v.shape[-1], q.shape[-1], q.dtype)
  _check(q, k, v, gamma, w0, chunk, block)
  if window - 1 > chunk:
    raise ValueError(f"omega_linear: window W={window} needs W − 1 ≤ C={chunk} (the carry must lie in the "
                     "previous chunk).")
  if bias not in ("l2", "dot"):
    raise ValueError(f"omega_linear: bias={bias!r}; expected 'l2' or 'dot'.")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  return _omega_linear(q, k, v, gamma, ca, eta, ct, sel, w0, s0, chunk, window, momentum, bias, block,
                       interpret, debug)
