"""Pallas kernels for the Omega-rule chunk update: a forward and a backward kernel joined by ``jax.custom_vjp``.

One program per (batch·head[, value tile]) walks the chunks in order (forward) or in reverse (backward),
keeping the fast weights Φ and momentum S in float32 on chip. The per-chunk math is ``linear_math`` (linear
memory, hand-derived backward) or ``mlp_math`` (mlp / gated_mlp, backward = vjp of the chunk forward, traced
into the kernel). Value rows of a linear memory are independent (row v of Φ only sees column v of the errors
E = K Aᵀ − V), so it may tile V over programs with no communication; MLP memories use one program per head.

The state-free work (the coefficient matrices and the scores M_b = Λ_b ⊙ Q K_bᵀ,
``chunk_common.step_coefficients``) runs before the kernels, batched over every (head, chunk) in XLA, so no
value tile repeats it and the loop holds only the products with the state; autodiff takes its cotangents from
the backward kernel's dM_b, dλ, dψ, … back to q, k and the gates.

What differentiation saves for the backward (a primal call outside differentiation saves nothing): the kernels'
inputs (q, k, v, the scores m_c, m_p [BH, T, C], the [BH, T] coefficient vectors, and for MLP memories Λ_c, Λ_p
[BH, T, C]), plus Φ_in (and S_in with momentum) at the start of every chunk, float32, [BH, n, m, n'] per weight
matrix; the backward kernel recomputes the rest of each chunk's state step. Autodiff of ``_coefficients`` (XLA,
outside the kernels) keeps its own intermediates as well: [C, C] matrices per (head, chunk) (the decays Dᵅ, Dᶿ,
Ψ_b, Λ_b, Q K_bᵀ), each a [BH, T, C] array in all. Gradients of the inputs that value tiles share are summed
over tiles outside the kernel (each tile writes its partial sum).

Kernel inputs (BH = batch·heads, T a multiple of C; ``ops.py`` prepares q, k, v and the gates, ``omega_chunk``
the coefficients), by role ("rows": the chunk's rows; "pair": the chunk's rows and the previous chunk's;
"shared": one [T] array for every program):
    q, k [BH, T, P] (φ applied), v [BH, T, V], m_c, m_p [BH, T, C], ᾱ, μ, θ̄, λ_c, λ_p, ψ_c, ψ_p [BH, T],
    (mlp, gated_mlp: Λ_c, Λ_p [BH, T, C]), sel [T]
weights, states: tuples of [BH, m, n] float32 (linear: W [V, P]; mlp: W1 [V, F], W2 [F, P][, W3 [F, P]]).
Outputs: y [BH, T, V] float32 (the caller rounds it once, after any residual), Φ_out, S_out, anchor float32.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.omega_chunk import linear_math, mlp_math
from pallas_kernels.omega_chunk.chunk_common import Chunk, dot_precision, step_coefficients
from pallas_kernels.omega_chunk.linear_math import LinearChunk
from pallas_kernels.omega_chunk.mlp_math import MlpChunk

KINDS = ("linear", "mlp", "gated_mlp")
_VALUE_INPUT = 2  # v: the one input tiled by value rows

# Triton's float32 dot variants (H200 measurements: BENCHMARKS.md, GPU):
#   tf32    one TF32 tensor-core pass (10-bit mantissa products; the precision XLA uses for float32 matmuls on
#           GPU by default). Errors ~1e-4 relative to exact float32 on the tests' sampled cases.
#   tf32x3  three TF32 passes. Needs more shared memory (no linear tiling fitted at K = V = 128, C = 64), and
#           was *less* accurate than tf32 on one bfloat16 mlp case (gradients off by 2–5e-2); not the default.
#   ieee    exact float32: unrolled FMA code, a 5-minute compile at K = V = 128 (fine at small sizes).
TRITON_DOTS = {"tf32": jax.lax.DotAlgorithmPreset.TF32_TF32_F32,
               "tf32x3": jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3,
               "ieee": jax.lax.DotAlgorithmPreset.F32_F32_F32}


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiling: ``value`` = BV value rows per program (divides V; linear memory only); Triton launch knobs;
  ``dot``: the compiled kernels' matmul algorithm (a ``TRITON_DOTS`` key; the interpreter is always exact)."""
  value: int
  num_warps: int = 4
  num_stages: int = 1
  dot: str = "tf32"

  @classmethod
  def get_default(cls, kind: str, value_dim: int, feature_dim: int, dot: str = "tf32") -> "BlockSizes":
    """Linear: BV = 16 when it divides V (else V): at K = V = 128, C = 64 the kernels' shared memory fits an
    H200's 227 KiB with BV = 16 and not with 32 (most of it holds [C, P] and [C, C] tiles, not the [BV, P]
    state). MLP: BV = V. 8 warps once the per-program state exceeds 64K floats."""
    value = 16 if kind == "linear" and value_dim % 16 == 0 else value_dim
    state = value * feature_dim if kind == "linear" else 4 * value * feature_dim
    return cls(value=value, num_warps=4 if state <= 64 * 1024 else 8, dot=dot)


@dataclasses.dataclass(frozen=True)
class Static:
  """The kernels' static configuration (``omega_chunk``'s keywords); ``reference.py`` runs the same chunk math
  through it."""
  kind: str
  chunk: int
  window: int
  momentum: bool
  bias: str
  block: BlockSizes
  interpret: bool
  debug: bool

  @property
  def tiled(self) -> bool:
    return self.kind == "linear"

  @property
  def chunk_type(self):
    return LinearChunk if self.kind == "linear" else MlpChunk

  @property
  def roles(self):
    """Per kernel input, in the order of ``chunk_type``'s fields: q "rows", k and v "pair" (two fields each),
    one "rows" per coefficient array, sel "shared"."""
    return ("rows", "pair", "pair") + ("rows",) * (len(self.chunk_type._fields) - 6) + ("shared",)

  def prepare(self, x: Chunk):
    """One chunk's ``chunk_type`` from its raw inputs (the reference's path; the kernels batch this)."""
    return self.chunk_type(x.q, x.kc, x.kp, x.vc, x.vp, *self.coefficients(x), x.sel)

  def coefficients(self, x: Chunk):
    return step_coefficients(x, self.window, self.momentum, matrices=self.kind != "linear")

  @property
  def precision(self):
    """Matmul precision of the state steps (the kernels' matmuls): exact float32 interpreted, ``block.dot`` in
    Triton. The coefficients ignore it (always exact float32, in XLA)."""
    return jax.lax.Precision.HIGHEST if self.interpret else TRITON_DOTS[self.block.dot]

  def forward(self, x: Chunk, weights, states):
    with dot_precision(self.precision):
      return self._forward(x, weights, states)

  def backward(self, x: Chunk, weights, states, dy, dweights, dstates):
    with dot_precision(self.precision):
      return self._backward(x, weights, states, dy, dweights, dstates)

  def _forward(self, x, weights, states):
    if self.kind == "linear":
      y, w, s = linear_math.chunk_forward(x, weights[0], states[0], momentum=self.momentum, bias=self.bias)
      return y, (w,), (s,)
    return mlp_math.chunk_forward(x, weights, states, kind=self.kind, momentum=self.momentum, bias=self.bias)

  def _backward(self, x, weights, states, dy, dweights, dstates):
    if self.kind == "linear":
      g, dw, ds = linear_math.chunk_backward(x, weights[0], states[0], dy, dweights[0], dstates[0],
                                             momentum=self.momentum, bias=self.bias)
      return g, (dw,), (ds,)
    return mlp_math.chunk_backward(x, weights, states, dy, dweights, dstates, kind=self.kind,
                                   momentum=self.momentum, bias=self.bias)


def _rows(ref, rows):
  """ref's rows `rows` (all trailing columns)."""
  return ref[rows] if len(ref.shape) == 1 else ref[rows, :]


def _store(ref, rows, value):
  if len(ref.shape) == 1:
    ref[rows] = value.astype(ref.dtype)
  else:
    ref[rows, :] = value.astype(ref.dtype)


def _load_chunk(refs, static: Static, j):
  """Chunk j's tiles as ``static.chunk_type``, "pair" inputs with the previous chunk's rows too (zeros for
  j = 0), upcast to float32."""
  chunk = static.chunk
  rows = pl.ds(j * chunk, chunk)
  prev = pl.ds(jnp.maximum(j - 1, 0) * chunk, chunk)
  keep = jnp.minimum(j, 1).astype(jnp.float32)  # zeros before the first chunk
  fields = []
  for ref, role in zip(refs, static.roles):
    fields.append(_rows(ref, rows).astype(jnp.float32))
    if role == "pair":
      fields.append(_rows(ref, prev).astype(jnp.float32) * keep)
  return static.chunk_type(*fields)


def _forward_kernel(*refs, static: Static, num_weights: int, save_states: bool):
  nw = num_weights
  ni = len(static.roles)
  input_refs = refs[:ni]
  w0_refs, s0_refs = refs[ni:ni + nw], refs[ni + nw:ni + 2 * nw]  # [m, n] each (BV rows)
  out_refs = refs[ni + 2 * nw:]
  y_ref = out_refs[0]  # [T, BV]
  w_out_refs, s_out_refs, anchor_refs = (out_refs[1 + i * nw:1 + (i + 1) * nw] for i in range(3))
  saved_refs = out_refs[1 + 3 * nw:]  # [n, m, n']: Φ_in per chunk (then S_in per chunk with momentum)
  chunk = static.chunk
  n = y_ref.shape[0] // chunk

  def step(j, weights, states):
    if save_states:
      for i in range(nw):
        saved_refs[i][j] = weights[i]
        if static.momentum:
          saved_refs[nw + i][j] = states[i]
    y, weights, states = static.forward(_load_chunk(input_refs, static, j), weights, states)
    y_ref[pl.ds(j * chunk, chunk), :] = y.astype(y_ref.dtype)  # [C, BV]
    return weights, states

  init = (tuple(r[...].astype(jnp.float32) for r in w0_refs), tuple(r[...].astype(jnp.float32) for r in s0_refs))
  weights, states = jax.lax.fori_loop(0, n - 1, lambda j, carry: step(j, *carry), init)
  for ref, w in zip(anchor_refs, weights):  # Φ_in of the last chunk: the state's anchor
    ref[...] = w
  weights, states = step(n - 1, weights, states)
  for ref, w in zip(w_out_refs + s_out_refs, weights + states):
    ref[...] = w


def _backward_kernel(*refs, static: Static, num_weights: int):
  nw = num_weights
  roles = static.roles
  ni = len(roles)
  input_refs = refs[:ni]
  w_saved_refs, s_saved_refs = refs[ni:ni + nw], refs[ni + nw:ni + 2 * nw]  # [n, m, n']
  dy_ref = refs[ni + 2 * nw]  # [T, BV]
  dw_out_refs, ds_out_refs, d_anchor_refs = (
      refs[ni + 2 * nw + 1 + i * nw:ni + 2 * nw + 1 + (i + 1) * nw] for i in range(3))  # [m, n']
  out_refs = refs[ni + 5 * nw + 1:]
  grads_refs = out_refs[:-2 * nw]  # one per input but sel, shaped like it (a value tile, or this tile's partial)
  dw0_refs, ds0_refs = out_refs[-2 * nw:-nw], out_refs[-nw:]
  chunk = static.chunk
  n = dy_ref.shape[0] // chunk
  is_last = lambda j: jnp.maximum(j - (n - 2), 0).astype(jnp.float32)  # 1 for j = n − 1, else 0

  def body(i, carry):
    j = n - 1 - i
    dweights, dstates, pending = carry
    weights = tuple(r[j] for r in w_saved_refs)
    states = (tuple(r[j] for r in s_saved_refs) if static.momentum
              else tuple(jnp.zeros_like(w) for w in weights))
    rows = pl.ds(j * chunk, chunk)
    g, dweights, dstates = static.backward(_load_chunk(input_refs, static, j), weights, states,
                                           dy_ref[rows, :].astype(jnp.float32), dweights, dstates)
    # The anchor output is Φ_in of the last chunk.
    dweights = tuple(dw + is_last(j) * r[...] for dw, r in zip(dweights, d_anchor_refs))
    fields, pend, new_pending = iter(g), iter(pending), []
    for ref, role in zip(grads_refs, roles):
      d = next(fields)
      if role == "pair":  # the next chunk's previous-slot cotangents belong to this chunk's rows
        d = d + next(pend)
        new_pending.append(next(fields))
      _store(ref, rows, d)
    return dweights, dstates, tuple(new_pending)

  pairs = [ref for ref, role in zip(grads_refs, roles) if role == "pair"]
  init = (tuple(r[...] for r in dw_out_refs), tuple(r[...] for r in ds_out_refs),
          tuple(jnp.zeros((chunk,) + ref.shape[1:], jnp.float32) for ref in pairs))
  dweights, dstates, _ = jax.lax.fori_loop(0, n, body, init)
  for ref, d in zip(dw0_refs + ds0_refs, dweights + dstates):
    ref[...] = d


def _check(q, k, v, gates, sel, weights, states, static: Static):
  bh, length, p = q.shape
  value = v.shape[-1]
  if k.shape != q.shape or v.shape[:2] != (bh, length):
    raise ValueError(f"omega_chunk: expected q, k [BH, T, P] and v [BH, T, V]; got q {q.shape}, k {k.shape}, "
                     f"v {v.shape}.")
  for name, gate in zip(("gamma", "log_alpha", "eta", "log_theta"), gates):
    if gate.shape != (bh, length):
      raise ValueError(f"omega_chunk: {name} has shape {gate.shape}; expected [BH, T] = {(bh, length)}.")
  if sel.shape != (length,):
    raise ValueError(f"omega_chunk: sel has shape {sel.shape}; expected [T] = {(length,)}.")
  if length % static.chunk:
    raise ValueError(f"omega_chunk: T={length} must be a multiple of the chunk size C={static.chunk} (pad first).")
  if static.kind not in KINDS:
    raise ValueError(f"omega_chunk: kind={static.kind!r}; expected one of {KINDS}.")
  expected = 1 if static.kind == "linear" else (2 if static.kind == "mlp" else 3)
  if len(weights) != expected or len(states) != expected:
    raise ValueError(f"omega_chunk: kind={static.kind!r} takes {expected} weight and state matrices; got "
                     f"{len(weights)} and {len(states)}.")
  # linear: W [BH, V, P]; mlp: W1 [BH, V, F], W2 [BH, F, P]; gated_mlp: also W3 [BH, F, P] (F from W1).
  hidden = weights[0].shape[-1]
  names = ("W [BH, V, P]",) if static.kind == "linear" else ("W1 [BH, V, F]", "W2 [BH, F, P]", "W3 [BH, F, P]")
  shapes = [(bh, value, p)] if static.kind == "linear" else [(bh, value, hidden), (bh, hidden, p), (bh, hidden, p)]
  for i, (w, s, name, shape) in enumerate(zip(weights, states, names, shapes)):
    if w.shape != shape:
      raise ValueError(f"omega_chunk: weights[{i}] has shape {w.shape}; expected {name} = {shape} with BH={bh}, "
                       f"V={value}, P={p}" + ("." if static.kind == "linear" else f", F={hidden} (from weights[0])."))
    if s.shape != w.shape:
      raise ValueError(f"omega_chunk: states[{i}] has shape {s.shape}, its weight {w.shape}.")
  if value % static.block.value or (not static.tiled and static.block.value != value):
    raise ValueError(f"omega_chunk: block_sizes.value={static.block.value} must divide V={value} (and equal V "
                     f"for kind={static.kind!r}).")
  if static.window - 1 > static.chunk:
    raise ValueError(f"omega_chunk: window W={static.window} needs W − 1 ≤ C={static.chunk} (the carry must lie "
                     "in the previous chunk).")
  if static.bias not in ("l2", "dot"):
    raise ValueError(f"omega_chunk: bias={static.bias!r}; expected 'l2' or 'dot'.")
  if static.block.dot not in TRITON_DOTS:
    raise ValueError(f"omega_chunk: block_sizes.dot={static.block.dot!r}; expected one of {tuple(TRITON_DOTS)}.")


def _input_specs(inputs, static: Static):
  """BlockSpecs of the kernel inputs: whole sequences per program; v takes its value tile; sel is shared."""
  def spec(i, x):
    if i == _VALUE_INPUT:
      return _value_rows(static, x.shape[1])
    if x.ndim == 1:
      return pl.BlockSpec(x.shape, lambda b, vt: (0,))
    return pl.BlockSpec((None,) + x.shape[1:], lambda b, vt: (b,) + (0,) * (x.ndim - 1))
  return [spec(i, x) for i, x in enumerate(inputs)]


def _value_rows(static: Static, length: int):
  return pl.BlockSpec((None, length, static.block.value), lambda b, vt: (b, 0, vt))


def _matrix_spec(static: Static, shape, chunks: int | None = None):
  """A weight-shaped [BH, (n,) m, n'] array: the linear memory's value tile of rows, else the whole matrix."""
  rows = static.block.value if static.tiled else shape[-2]
  if chunks is None:
    return pl.BlockSpec((None, rows, shape[-1]), lambda b, vt: (b, vt, 0))
  return pl.BlockSpec((None, chunks, rows, shape[-1]), lambda b, vt: (b, 0, vt, 0))


def _call(kernel, out_shape, in_specs, out_specs, grid, static: Static):
  params = pltriton.CompilerParams(num_warps=static.block.num_warps, num_stages=static.block.num_stages)
  return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_specs,
                        interpret=static.interpret, debug=static.debug, compiler_params=params)


def _forward(inputs, weights, states, static: Static, save_states: bool):
  """(y, Φ_out…, S_out…, anchor…[, Φ_in per chunk…[, S_in per chunk…]])."""
  q, v = inputs[0], inputs[_VALUE_INPUT]
  bh, length = q.shape[:2]
  n = length // static.chunk
  f32 = jnp.float32
  specs = [_matrix_spec(static, w.shape) for w in weights]
  out_shape = [jax.ShapeDtypeStruct((bh, length, v.shape[-1]), f32)]  # rounded once by the caller
  out_shape += [jax.ShapeDtypeStruct(w.shape, f32) for w in weights] * 3
  out_specs = [_value_rows(static, length)] + specs * 3
  if save_states:
    for _ in range(2 if static.momentum else 1):
      out_shape += [jax.ShapeDtypeStruct((bh, n) + w.shape[1:], f32) for w in weights]
      out_specs += [_matrix_spec(static, w.shape, n) for w in weights]
  kernel = functools.partial(_forward_kernel, static=static, num_weights=len(weights), save_states=save_states)
  grid = (bh, v.shape[-1] // static.block.value)
  return _call(kernel, out_shape, _input_specs(inputs, static) + specs * 2, out_specs, grid, static)(
      *inputs, *weights, *states)


def _split(outs, nw: int, groups: int):
  """(outs[0], then `groups` tuples of nw outputs each) from the forward kernel's flat outputs."""
  return (outs[0],) + tuple(tuple(outs[1 + i * nw:1 + (i + 1) * nw]) for i in range(groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _omega_chunk(inputs, weights, states, static: Static):
  """(y, Φ_out, S_out, anchor)."""
  return _split(_forward(inputs, weights, states, static, save_states=False), len(weights), 3)


def _omega_chunk_fwd(inputs, weights, states, static: Static):
  outs = _split(_forward(inputs, weights, states, static, save_states=True), len(weights),
                5 if static.momentum else 4)
  saved_s = outs[5] if static.momentum else None
  return outs[:4], (inputs, outs[4], saved_s)


def _omega_chunk_bwd(static: Static, residuals, cotangents):
  inputs, saved_w, saved_s = residuals
  dy, dweights, dstates, d_anchor = cotangents
  v = inputs[_VALUE_INPUT]
  bh, length = v.shape[:2]
  n = length // static.chunk
  nw = len(saved_w)
  tiles = v.shape[-1] // static.block.value
  f32 = jnp.float32
  if saved_s is None:  # unused without momentum: any arrays of the right layout, one chunk long
    saved_s = tuple(w[:, :1] for w in saved_w)
    s_specs = [_matrix_spec(static, w.shape[:1] + w.shape[2:], 1) for w in saved_w]
  else:
    s_specs = [_matrix_spec(static, w.shape[:1] + w.shape[2:], n) for w in saved_w]
  shapes = [w.shape[:1] + w.shape[2:] for w in saved_w]
  specs = [_matrix_spec(static, s) for s in shapes]
  in_specs = (_input_specs(inputs, static) + [_matrix_spec(static, s, n) for s in shapes] + s_specs
              + [_value_rows(static, length)] + specs * 3)
  # One gradient per differentiable input (all but sel): v's value tile, else this tile's partial sum.
  grad_shapes, grad_specs = [], []
  for i, x in enumerate(inputs[:-1]):
    if i == _VALUE_INPUT:
      grad_shapes.append(jax.ShapeDtypeStruct(x.shape, f32))
      grad_specs.append(_value_rows(static, length))
    else:
      grad_shapes.append(jax.ShapeDtypeStruct((bh, tiles) + x.shape[1:], f32))
      grad_specs.append(pl.BlockSpec((None, None) + x.shape[1:], lambda b, vt, r=x.ndim - 1: (b, vt) + (0,) * r))
  out_shape = grad_shapes + [jax.ShapeDtypeStruct(s, f32) for s in shapes] * 2
  kernel = functools.partial(_backward_kernel, static=static, num_weights=nw)
  as_f32 = lambda xs: tuple(x.astype(f32) for x in xs)
  outs = _call(kernel, out_shape, in_specs, grad_specs + specs * 2, (bh, tiles), static)(
      *inputs, *saved_w, *saved_s, dy, *as_f32(dweights), *as_f32(dstates), *as_f32(d_anchor))
  grads = [g if i == _VALUE_INPUT else jnp.sum(g, axis=1) for i, g in enumerate(outs[:len(inputs) - 1])]
  d_inputs = tuple(g.astype(x.dtype) for g, x in zip(grads, inputs)) + (jnp.zeros_like(inputs[-1]),)
  return d_inputs, tuple(outs[-2 * nw:-nw]), tuple(outs[-nw:])


_omega_chunk.defvjp(_omega_chunk_fwd, _omega_chunk_bwd)


def omega_chunk(q, k, v, gamma, log_alpha, eta, log_theta, sel, weights, states, *, kind: str, chunk: int,
                window: int, momentum: bool, bias: str, block_sizes: BlockSizes | None = None,
                interpret: bool | None = None, debug: bool = False):
  """The Omega-rule memory over prepared inputs → (y [BH, T, V], Φ_out, S_out, anchor), the last three tuples
  shaped like ``weights``.

  Inputs (module docstring; ``ops.py`` prepares them from the memory op's arguments): q, k are φ(q), φ(k); v the
  values (minus r(k) for residual l2); gamma, log_alpha, eta, log_theta [BH, T] the gates (log gates may be −∞);
  sel marks each chunk's last valid row; weights, states the initial Φ and S. Differentiable in every input but
  sel. y is float32 whatever q's dtype.

  interpret: run the kernels in the Pallas interpreter (default: True on CPU, where nothing else runs).
  """
  weights, states = tuple(weights), tuple(states)
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  block = block_sizes or BlockSizes.get_default(kind, v.shape[-1], q.shape[-1])
  static = Static(kind, chunk, window, momentum, bias, block, interpret, debug)
  _check(q, k, v, (gamma, log_alpha, eta, log_theta), sel, weights, states, static)
  inputs = (q, k, v) + _coefficients(q, k, gamma, log_alpha, eta, log_theta, sel, static) + (sel,)
  return _omega_chunk(inputs, weights, states, static)


def _coefficients(q, k, gamma, log_alpha, eta, log_theta, sel, static: Static):
  """``static.coefficients`` of every (head, chunk) at once → (m_c, m_p [BH, T, C], ᾱ, μ, θ̄, λ_c, λ_p, ψ_c, ψ_p
  [BH, T][, Λ_c, Λ_p [BH, T, C]]), in XLA at exact float32 (CHUNKED.md §C.4.6; not the kernels' ``block.dot``)."""
  bh, length, _ = q.shape
  chunk = static.chunk
  f32 = jnp.float32
  blocks = lambda x: x.astype(f32).reshape((bh, length // chunk, chunk) + x.shape[2:])
  previous = lambda x: jnp.pad(x[:, :-1], [(0, 0), (1, 0)] + [(0, 0)] * (x.ndim - 2))  # zeros before the start
  kb, gb = blocks(k), blocks(gamma)
  x = Chunk(q=blocks(q), kc=kb, kp=previous(kb), vc=None, vp=None, gc=gb, gp=previous(gb),
            log_alpha=blocks(log_alpha), eta=blocks(eta), log_theta=blocks(log_theta),
            sel=blocks(jnp.broadcast_to(sel, (bh, length))))
  out = jax.vmap(jax.vmap(static.coefficients))(x)
  return tuple(c.reshape((bh, length) + c.shape[3:]) for c in out)
