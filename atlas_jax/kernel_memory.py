"""The exponential-kernel memory of DeepTransformers and Dot (SPEC.md §4; CHUNKED.md §C.5, remark).

With φ = φ*, φ*(x)·φ*(y) = κ(x, y) = exp(x·y/τ), the weights acting on φ*(·) start at 0 and every gradient of
them is a sum of u ⊗ φ*(k_j); they are stored as coefficient rows u_j on a cache of keys k_j, so that
W φ*(x) = Σ_j u_j κ(k_j, x) — an attention-like read whose values are written by the inner optimiser. Finite
layers (W1 of the MLP kind) are ordinary fast weights. Anchoring, the window, retention and η act exactly as
in §3 (no momentum; Muon is undefined for an infinite matrix). Per segment of R rows and N = W − 1 + R slots:

    linear:  e_i = Σ_j uᴬ_j κ(k_j, k_i) + r(k_i) − v_i (l2) or −v_i (dot)
             Y = Rᵠ + diag(ᾱ) κ(Q, K_cache) U_in − (Λ ⊙ κ(Q, K_slots)) E
    mlp:     h_i = Σ_j uᴬ_j κ(k_j, k_i), z_i = gelu(h_i), e_i = W1ᴬ z_i + r(k_i) − v_i, δ_i = (W1ᴬᵀ e_i) ⊙ gelu′(h_i)
             H = diag(ᾱ) κ(Q, K_cache) U_in − (Λ ⊙ κ(Q, K_slots)) Δ,  Zᵠ = gelu(H)
             Y = Rᵠ + diag(ᾱ) Zᵠ W1_inᵀ − (Λ ⊙ Zᵠ Zᵀ) E
    end:     U_out = ᾱ_l U_in, then slot rows −= Λ_{l,i} (e_i or δ_i);  W1_out = ᾱ_l W1_in − Eᵀ diag(Λ_l) Z

The cache row of absolute position t is t + W − 1, so a segment's N slots are one contiguous slice. The cost is
O(T²), like attention; the state is the key/coefficient cache. ``normalized`` (linear memory, dot bias only)
divides by the same memory run with v ≡ 1, which for α = η = γ = 1, W = 1 is causal softmax attention.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from atlas_jax.memory.chunked import default_block_size, from_segments, plan_segments, to_segments
from atlas_jax.memory.coefficients import coefficients
from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.fast_weights import gelu_and_grad
from atlas_jax.memory.state import Gates

Kernel = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]  # rows x [n, K], y [m, K] → [n, m]


class KernelMemoryState(NamedTuple):
  """keys [B, H, S, K]; coeffs (U) and anchor_coeffs [B, H, S, m]; w1 and anchor_w1 [B, H, V, F] (mlp; else
  None); window_k/v/gamma as in MemoryState; position int32. S = W − 1 + capacity, m = V (+1) or F."""

  keys: jnp.ndarray
  coeffs: jnp.ndarray
  anchor_coeffs: jnp.ndarray
  w1: jnp.ndarray | None
  anchor_w1: jnp.ndarray | None
  window_k: jnp.ndarray
  window_v: jnp.ndarray
  window_gamma: jnp.ndarray
  position: jnp.ndarray


def check_config(config: MemoryConfig, normalized: bool) -> None:
  if config.kind not in ("linear", "mlp"):
    raise ValueError(f"the exponential-kernel memory supports kind 'linear' or 'mlp', not {config.kind!r}.")
  if config.momentum or config.muon or config.granularity != "token":
    raise ValueError("the exponential-kernel memory has no momentum or Muon (SPEC.md §4); got "
                     f"momentum={config.momentum}, muon={config.muon}, granularity={config.granularity!r}.")
  if config.max_grad_norm is not None:
    raise ValueError(f"max_grad_norm={config.max_grad_norm} is not implemented for the exponential-kernel memory; "
                     "set it to None.")
  if normalized and not (config.kind == "linear" and config.bias == "dot" and not config.residual):
    raise ValueError("normalized reads are defined for the linear memory with the dot bias and no residual only.")


def init_kernel_state(config: MemoryConfig, w1_init, batch: int, heads: int, capacity: int, key_dim: int,
                      value_dim: int, normalized: bool = False) -> KernelMemoryState:
  """Empty state with room for `capacity` tokens (plus one segment of padding). w1_init [H, V, F] or None."""
  slots = config.window - 1 + capacity + config.chunk_size
  width = w1_init.shape[-1] if config.kind == "mlp" else value_dim + int(normalized)
  zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
  w1 = None if w1_init is None else jnp.broadcast_to(w1_init.astype(jnp.float32), (batch,) + w1_init.shape)
  return KernelMemoryState(
      keys=zeros(batch, heads, slots, key_dim), coeffs=zeros(batch, heads, slots, width),
      anchor_coeffs=zeros(batch, heads, slots, width), w1=w1, anchor_w1=w1,
      window_k=zeros(batch, heads, config.window - 1, key_dim),
      window_v=zeros(batch, heads, config.window - 1, value_dim + int(normalized)),
      window_gamma=zeros(batch, heads, config.window - 1), position=jnp.zeros((), jnp.int32))


def _segment(config: MemoryConfig, kernel: Kernel, carry: KernelMemoryState, seg):
  (q, k, v, log_alpha, eta, gamma), length, start = seg
  starts_chunk = start % config.chunk_size == 0
  pick = lambda new, old: jnp.where(starts_chunk, new, old)
  anchor_coeffs = pick(carry.coeffs, carry.anchor_coeffs)
  anchor_w1 = None if carry.w1 is None else pick(carry.w1, carry.anchor_w1)
  rows, carried = q.shape[0], config.window - 1

  keys_cache = jax.lax.dynamic_update_slice_in_dim(carry.keys, k, start + carried, axis=0)
  slot_k = jnp.concatenate([carry.window_k, k])
  slot_v = jnp.concatenate([carry.window_v, v])
  slot_gamma = jnp.concatenate([carry.window_gamma, gamma])
  co = coefficients(log_alpha, eta, None, slot_gamma, length, config.window)
  last = jnp.maximum(length - 1, 0)
  residual = (lambda x: x) if config.residual else (lambda x: 0.0)

  k_slots_cache = kernel(slot_k, keys_cache)  # [N, S]
  q_cache = kernel(q, keys_cache)  # [R, S]
  mix = co.lam * kernel(q, slot_k)  # Λ ⊙ κ(Q, K_slots) [R, N]
  if config.kind == "linear":
    e = -slot_v if config.bias == "dot" else k_slots_cache @ anchor_coeffs + residual(slot_k) - slot_v
    y = co.alpha_bar[:, None] * (q_cache @ carry.coeffs) - mix @ e + residual(q)
    slot_rows, w1 = e, None
  else:
    z, dz = gelu_and_grad(k_slots_cache @ anchor_coeffs)  # [N, F]
    e = -slot_v if config.bias == "dot" else z @ anchor_w1.T + residual(slot_k) - slot_v
    delta = (e @ anchor_w1) * dz
    h = co.alpha_bar[:, None] * (q_cache @ carry.coeffs) - mix @ delta
    zq = jax.nn.gelu(h)
    y = (co.alpha_bar[:, None] * (zq @ carry.w1.T) - (co.lam * (zq @ z.T)) @ e) + residual(q)
    slot_rows = delta
    w1 = co.alpha_bar[last] * carry.w1 - (e * co.lam[last][:, None]).T @ z

  coeffs = co.alpha_bar[last] * carry.coeffs
  slot_block = jax.lax.dynamic_slice_in_dim(coeffs, start, carried + rows, axis=0)
  coeffs = jax.lax.dynamic_update_slice_in_dim(coeffs, slot_block - co.lam[last][:, None] * slot_rows, start, axis=0)
  new = KernelMemoryState(
      keys=keys_cache, coeffs=coeffs, anchor_coeffs=anchor_coeffs, w1=w1, anchor_w1=anchor_w1,
      window_k=jax.lax.dynamic_slice_in_dim(slot_k, length, carried),
      window_v=jax.lax.dynamic_slice_in_dim(slot_v, length, carried),
      window_gamma=jax.lax.dynamic_slice_in_dim(slot_gamma, length, carried), position=None)
  new = jax.tree_util.tree_map(lambda n, o: jnp.where(length > 0, n, o), new, carry)
  return new, y


def exp_kernel(inv_temperature) -> Kernel:
  """κ(x, y) = exp(x·y / τ) with 1/τ given per head (a scalar here)."""
  return lambda x, y: jnp.exp(inv_temperature * (x @ y.T))


def kernel_memory(q, k, v, gates: Gates, state: KernelMemoryState, config: MemoryConfig, kernel_factory, params,
                  *, normalized: bool = False, static_position: int | None = None):
  """Kernel memory over q, k [B, T, H, K], v [B, T, H, V] → (y [B, T, H, V] float32, state).

  kernel_factory(params_h) builds one head's κ from that head's slice of `params` (e.g. 1/τ [H]).
  """
  check_config(config, normalized)
  length = q.shape[1]
  if length == 0:
    return jnp.zeros(v.shape, jnp.float32), state
  if normalized:
    v = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)
  rows = default_block_size(config, length)
  static = static_position is not None
  position = static_position if static else state.position
  _, start, valid, token_of_row, out_index = plan_segments(position, length, rows, static)
  xs = tuple(to_segments(x, token_of_row, valid, state.keys.dtype)
             for x in (q, k, v, gates.log_alpha, gates.eta, gates.gamma))

  def one_head(p, carry, seg):
    return _segment(config, kernel_factory(p), carry, seg)

  step = jax.vmap(jax.vmap(one_head, in_axes=(0, 0, ((0,) * 6, None, None))),
                  in_axes=(None, 0, ((0,) * 6, None, None)))
  head_state = state._replace(position=None)
  final, y = jax.lax.scan(lambda c, s: step(params, c, s), head_state,
                          (xs, jnp.asarray(valid), jnp.asarray(start)))
  y = from_segments(y, out_index)
  if normalized:
    y = y[..., :-1] / y[..., -1:]
  # The cache holds `capacity` positions (init_kernel_state); later keys would overwrite its last rows. A known
  # position is checked here; under jit (decoding) the outputs of positions past it are NaN, as attention's.
  capacity = state.keys.shape[2] - (config.window - 1) - config.chunk_size
  if static:
    if position + length > capacity:
      raise ValueError(f"positions {position}…{position + length - 1} do not fit this kernel-memory state, made "
                       f"for {capacity} positions (init_kernel_state's capacity).")
  else:
    y = jnp.where((position + jnp.arange(length) < capacity)[None, :, None, None], y, jnp.nan)
  return y, final._replace(position=(state.position + length).astype(jnp.int32))
