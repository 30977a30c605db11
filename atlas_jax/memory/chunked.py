"""The chunk-parallel ("dual form") memory: ``lax.scan`` over segments, dense matmuls inside (CHUNKED.md).

The sequence is cut into *segments* — the intersections of the call's positions [p, p + T) with the aligned
blocks of R positions (R divides C, so every segment lies inside one chunk). Each segment is one scan step of
R rows, its L valid rows first and padding after (gates α = 1, η = 0, θ = 1, γ = 0; q = k = v = 0; band rows
zeroed), so the end state is read at row L − 1 and empty steps (L = 0) are identities (CHUNKED.md §C.8).

Per segment, for one head (𝓛, 𝓡 the factor stacks of §C.1 at the anchor A, for each weight matrix):

    token granularity, no Muon (§C.5–§C.6), reading every position without forming Φ_t:
      read(X) = diag(ᾱ) X Φ_inᵀ − diag(μ) X S_inᵀ − (Λ ⊙ X 𝓡ᵀ) 𝓛
      Φ_out = ᾱ_l Φ_in − μ_l S_in − 𝓛ᵀ diag(Λ_l) 𝓡,   S_out = θ̄_l S_in + 𝓛ᵀ diag(Ψ_l) 𝓡
    Muon (§C.7): 𝐒_t = θ̄_t S_in + 𝓛ᵀ diag(Ψ_t) 𝓡 for every row, 𝐔 = NS_k(𝐒) batched over rows,
      read(X)_t = ᾱ_t Φ_in x_t − Σ_τ (Dᵅ diag η)_{tτ} 𝐔_τ x_t
    chunk granularity (§C.7b): reads at the anchor; Φ changes only at a chunk's last position.
MLP kinds read layer 2 first (H = read(φ(Q))), apply the activation, then layer 1 (Y = read(Zᵠ)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from atlas_jax.memory import fast_weights
from atlas_jax.memory.coefficients import Coefficients, coefficients
from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.feature_maps import feature_map
from atlas_jax.memory.state import Gates, MemoryState

_map = jax.tree_util.tree_map


def default_block_size(config: MemoryConfig, length: int) -> int:
  """R: the chunk size, or for calls shorter than a chunk the largest divisor of C that is ≤ T."""
  c = config.chunk_size
  if length >= c:
    return c
  return max(d for d in range(1, max(length, 1) + 1) if c % d == 0)


def _read(x, phi_in, s_in, fac, co: Coefficients, pairs):
  """Rows (Φ_t x_t) for inputs x [R, n] (token granularity; see the module docstring).

  s_in is None without momentum (μ = 0); pairs are Muon's per-row updates 𝐔 [R, m, n].
  """
  out = co.alpha_bar[:, None] * (x @ phi_in.T)
  if pairs is not None:  # Muon: 𝐔_τ x_t for all (τ, t), contracted with Dᵅ diag(η).
    return out - jnp.einsum("tu,utm->tm", co.decay_eta, jnp.einsum("umn,tn->utm", pairs, x))
  left, right = fac
  if s_in is not None:
    out = out - co.mu[:, None] * (x @ s_in.T)
  return out - (co.lam * (x @ right.T)) @ left


def _read_memory(config, read, phi_q, q):
  """Y = M(Q; Φ_t) row by row, given read(name, X) = rows Φ_t[name] x_t."""
  if config.kind == "linear":
    y = read("W", phi_q)
  else:
    h = read("W2", phi_q)
    z = jax.nn.gelu(h) if config.kind == "mlp" else jax.nn.silu(h) * read("W3", phi_q)
    y = read("W1", z)
  return y + q if config.residual else y


def _segment_step(config: MemoryConfig, coeffs, carry: MemoryState, seg):
  """One segment of one head. carry has no (B, H) axes and no position; seg = (inputs, L, start)."""
  (q, k, v, log_alpha, eta, log_theta, gamma), length, start = seg
  chunk = config.chunk_size
  starts_chunk = start % chunk == 0
  if carry.anchor is None:  # aligned scan (see `_chunked_scan`): every segment starts a chunk
    anchor = carry.weights
  else:
    anchor = _map(lambda a, w: jnp.where(starts_chunk, w, a), carry.anchor, carry.weights)
  decay_in = jnp.where(starts_chunk, 1.0, carry.decay)

  # N = W − 1 + R slots: the carried tokens, then the segment's.
  keys = jnp.concatenate([carry.window_k, k])
  values = jnp.concatenate([carry.window_v, v])
  slot_gamma = jnp.concatenate([carry.window_gamma, gamma])
  phi_k = feature_map(keys, config, coeffs)
  phi_q = feature_map(q, config, coeffs)
  facs = fast_weights.clip_factors(config, fast_weights.factors(config, anchor, phi_k, keys, values))
  co = coefficients(log_alpha, eta, log_theta if config.momentum else None, slot_gamma, length,
                    config.window)
  last = jnp.maximum(length - 1, 0)
  phi_in, s_in = carry.weights, carry.momentum

  def slot_sum(weights_row, fac):  # 𝓛ᵀ diag(w) 𝓡
    left, right = fac
    return (left * weights_row[:, None]).T @ right

  if config.granularity == "chunk":
    y = fast_weights.apply(config, anchor, phi_q, q)
    s_out = _map(lambda s, f: co.theta_bar[last] * s + slot_sum(co.psi[last], f), s_in, facs)
    u = _map(lambda s: fast_weights.newton_schulz(s, config.ns_steps), s_out) if config.muon else s_out
    decay = decay_in * co.alpha_bar[last]
    ends_chunk = (start + length) % chunk == 0
    phi_out = _map(lambda w, a, u_: jnp.where(ends_chunk, decay * a - eta[last] * u_, w), phi_in, anchor, u)
  elif config.muon:
    # 𝐒 [R, m, n] at every row, then NS batched over rows.
    s_all = _map(lambda s, f: co.theta_bar[:, None, None] * s + jnp.einsum("ti,im,in->tmn", co.psi, *f),
                 s_in, facs)
    u_all = _map(lambda s: fast_weights.newton_schulz(s, config.ns_steps), s_all)
    y = _read_memory(config, lambda n, x: _read(x, phi_in[n], None, None, co, u_all[n]), phi_q, q)
    phi_out = _map(lambda w, u_: co.alpha_bar[last] * w - jnp.einsum("u,umn->mn", co.decay_eta[last], u_),
                   phi_in, u_all)
    s_out = _map(lambda s: s[last], s_all)
    decay = decay_in * co.alpha_bar[last]
  else:
    read_s = s_in if config.momentum else {n: None for n in s_in}
    y = _read_memory(config, lambda n, x: _read(x, phi_in[n], read_s[n], facs[n], co, None), phi_q, q)
    phi_out = _map(lambda w, s, f: co.alpha_bar[last] * w - co.mu[last] * s - slot_sum(co.lam[last], f),
                   phi_in, s_in, facs)
    s_out = _map(lambda s, f: co.theta_bar[last] * s + slot_sum(co.psi[last], f), s_in, facs)
    decay = decay_in * co.alpha_bar[last]

  # The window carry: the last W − 1 of the N slots that hold real tokens, i.e. slots L … L + W − 2.
  carried = config.window - 1
  window_k = jax.lax.dynamic_slice_in_dim(keys, length, carried)
  window_v = jax.lax.dynamic_slice_in_dim(values, length, carried)
  window_gamma = jax.lax.dynamic_slice_in_dim(slot_gamma, length, carried)
  new = MemoryState(phi_out, None if carry.anchor is None else anchor, s_out, window_k, window_v, window_gamma,
                    decay, None)
  # An empty segment must leave the state exactly as it was.
  new = _map(lambda n, o: jnp.where(length > 0, n, o), new, carry)
  return new, y


def plan_segments(position, length: int, rows: int, static: bool):
  """Segments of [p, p + T) cut at multiples of R: per step its start position and valid length, plus the
  input row → token index [n, R] and the token → flat output index [T]."""
  xp = np if static else jnp
  if static:
    steps = (position + length - 1) // rows - position // rows + 1
  else:
    steps = (length - 2) // rows + 2 if length > 1 else 1  # ⌈(T − 1)/R⌉ + 1 bounds the blocks touched
  first_block = position // rows
  blocks = first_block + xp.arange(steps)
  start = xp.maximum(position, blocks * rows)
  end = xp.minimum(position + length, (blocks + 1) * rows)
  valid = xp.maximum(end - start, 0)
  token_of_row = xp.clip(start[:, None] - position + xp.arange(rows)[None, :], 0, length - 1)
  t = xp.arange(length) + position
  out_index = (t // rows - first_block) * rows + (t - start[t // rows - first_block])
  return steps, start, valid, token_of_row, out_index


def _contiguous(index) -> bool:
  """Whether a static index array is 0, 1, 2, … (so a gather by it is a reshape)."""
  return isinstance(index, np.ndarray) and np.array_equal(index.ravel(), np.arange(index.size))


def to_segments(x, token_of_row, valid, dtype):
  """[B, T, H, ...] → [n, B, H, R, ...]: each step's rows; padding rows are 0, i.e. q = k = v = 0, η = γ = 0 and
  (as log gates) α = θ = 1."""
  x = x.astype(dtype)
  if _contiguous(token_of_row) and np.all(valid == token_of_row.shape[1]):  # whole steps: no gather, no padding
    x = x.reshape(x.shape[:1] + token_of_row.shape + x.shape[2:])
  else:
    x = jnp.take(x, jnp.asarray(token_of_row), axis=1)  # [B, n, R, H, ...]
    row_valid = jnp.arange(x.shape[2])[None, :] < jnp.asarray(valid)[:, None]  # [n, R]
    x = jnp.where(row_valid.reshape(row_valid.shape + (1,) * (x.ndim - 3))[None], x, 0.0)
  return jnp.moveaxis(jnp.moveaxis(x, 3, 2), 1, 0)


def from_segments(y, out_index):
  """Step outputs y [n, B, H, R, V] → tokens [B, T, H, V]."""
  steps, batch, heads, rows, width = y.shape
  y = jnp.moveaxis(y, 0, 2).reshape(batch, heads, steps * rows, width)
  if not (_contiguous(out_index) and out_index.size == steps * rows):
    y = jnp.take(y, jnp.asarray(out_index), axis=2)
  return jnp.moveaxis(y, 1, 2)


def chunked_memory(q, k, v, gates: Gates, state: MemoryState, config: MemoryConfig, feature_coeffs, *,
                   static_position: int | None = None, block_size: int | None = None, remat: bool = False,
                   head_groups: int = 1):
  """Chunk-parallel memory; see `_chunked_scan`. head_groups > 1 runs that many independent scans over equal
  groups of heads, which XLA can execute concurrently (on CPU, one per core)."""
  heads = q.shape[2]
  if head_groups <= 1:
    return _chunked_scan(q, k, v, gates, state, config, feature_coeffs, static_position=static_position,
                         block_size=block_size, remat=remat)
  if heads % head_groups:
    raise ValueError(f"head_groups={head_groups} must divide the number of heads H={heads}.")
  size = heads // head_groups
  outputs, states = [], []
  for g in range(head_groups):
    part = lambda x, axis: None if x is None else jax.lax.slice_in_dim(x, g * size, (g + 1) * size, axis=axis)
    part_state = _map(lambda x: part(x, 1), state._replace(position=None))._replace(position=state.position)
    y, s = _chunked_scan(part(q, 2), part(k, 2), part(v, 2), Gates(*(part(x, 2) for x in gates)), part_state,
                         config, part(feature_coeffs, 0), static_position=static_position,
                         block_size=block_size, remat=remat)
    outputs.append(y)
    states.append(s._replace(position=None))
  state = _map(lambda *xs: jnp.concatenate(xs, axis=1), *states)
  return jnp.concatenate(outputs, axis=2), state._replace(position=s.position)


def _chunked_scan(q, k, v, gates: Gates, state: MemoryState, config: MemoryConfig, feature_coeffs, *,
                  static_position: int | None, block_size: int | None, remat: bool):
  """Chunk-parallel memory over q, k [B, T, H, K], v [B, T, H, V]; returns (y [B, T, H, V] in the state's dtype, state).

  static_position: the state's position when known at trace time (0 for a fresh state) — saves the extra
    head step that a traced position needs.
  block_size: rows per scan step R (a divisor of C; default C, or less for calls shorter than a chunk).
    Smaller blocks bound Muon's memory; the result does not depend on it.
  """
  length = q.shape[1]
  rows = block_size or default_block_size(config, length)
  if config.chunk_size % rows:
    raise ValueError(f"block_size={rows} must divide chunk_size={config.chunk_size}.")
  static = static_position is not None
  position = static_position if static else state.position
  _, start, valid, token_of_row, out_index = plan_segments(position, length, rows, static)
  dtype = state.window_k.dtype
  segments = lambda x: to_segments(x, token_of_row, valid, dtype)

  log_theta = gates.log_theta if config.momentum else jnp.zeros_like(gates.log_alpha)
  xs = tuple(segments(x) for x in (q, k, v, gates.log_alpha, gates.eta, log_theta, gates.gamma))

  position_out = state.position + length
  head_state = state._replace(position=None)
  step_one = lambda c, carry, seg: _segment_step(config, c, carry, seg)
  coeff_axis = None if feature_coeffs is None else 0
  over_heads = jax.vmap(step_one, in_axes=(coeff_axis, 0, ((0,) * 7, None, None)))
  over_batch = jax.vmap(over_heads, in_axes=(None, 0, ((0,) * 7, None, None)))

  step = lambda carry, seg: over_batch(feature_coeffs, carry, seg)
  if remat:
    step = jax.checkpoint(step)
  # Aligned: a fresh call from a chunk boundary cut into whole chunks, so every segment starts a chunk and its
  # anchor is its Φ_in. The anchor then stays outside the (checkpointed) step, which saves a third less state
  # for the backward pass; the state's anchor is still Φ_in of the last segment.
  aligned = static and position % config.chunk_size == 0 and rows == config.chunk_size and bool(np.all(valid > 0))

  def body(carry, seg):
    if not aligned:
      return step(carry, seg)
    new, y = step(carry._replace(anchor=None), seg)
    return new._replace(anchor=carry.weights), y

  final, y = jax.lax.scan(body, head_state, (xs, jnp.asarray(valid), jnp.asarray(start)))
  return from_segments(y, out_index), final._replace(position=jnp.asarray(position_out, jnp.int32))
