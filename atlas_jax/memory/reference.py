"""The executable definition of the memory (SPEC.md §5): a per-token ``lax.scan`` applying §3 literally.

Slow and obviously right. g_t is ``jax.grad`` of the window loss L_t(Φ) = Σ_{i=t−W+1..t} γ_i ℓ_i(Φ) at the anchor
A_t; every faster path is tested against this function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from atlas_jax.memory import fast_weights
from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.feature_maps import feature_map
from atlas_jax.memory.state import Gates, MemoryState

_map = jax.tree_util.tree_map


def _window_loss(config: MemoryConfig, anchor, keys, values, gammas, coeffs):
  """L_t(A) = Σ_i γ_i ℓ_i(A) over the window's raw keys [W, K], values [W, V] and gates γ [W]."""
  pred = fast_weights.apply(config, anchor, feature_map(keys, config, coeffs), keys)
  if config.bias == "l2":
    per_token = 0.5 * jnp.sum((pred - values) ** 2, axis=-1)
  else:
    per_token = -jnp.sum(pred * values, axis=-1)
  return jnp.sum(gammas * per_token)


def _window_grad(config: MemoryConfig, anchor, keys, values, gammas, coeffs):
  """g_t = ∇_A L_t(A); with ``max_grad_norm`` c, Σ_i γ_i ∇ℓ_i(A) · min(1, c / ‖∇ℓ_i(A)‖) instead."""
  if config.max_grad_norm is None:
    return jax.grad(_window_loss, argnums=1)(config, anchor, keys, values, gammas, coeffs)
  one = lambda k, v: jax.grad(_window_loss, argnums=1)(config, anchor, k[None], v[None], jnp.ones(1), coeffs)
  per_token = jax.vmap(one)(keys, values)  # {name: [W, m, n]}
  squared = sum(jnp.sum(g * g, axis=(1, 2)) for g in per_token.values())
  weights = gammas * fast_weights.clip_scale(squared, config.max_grad_norm)
  return _map(lambda g: jnp.einsum("i,imn->mn", weights, g), per_token)


def _head_scan(config: MemoryConfig, coeffs, state: MemoryState, q, k, v, log_alpha, eta, log_theta, gamma,
               remat_block: int = 0):
  """One head: q, k [T, K], v [T, V], gates [T]; state without the (B, H) axes → (y [T, V], state)."""
  chunk = config.chunk_size

  def step(carry: MemoryState, x):
    q_t, k_t, v_t, la_t, eta_t, lt_t, gamma_t = x
    pos = carry.position
    starts_chunk = pos % chunk == 0
    # A_t = Φ_{s(t)−1}: the anchor moves to the current weights at every chunk start (SPEC.md §3.3).
    anchor = _map(lambda a, w: jnp.where(starts_chunk, w, a), carry.anchor, carry.weights)
    decay = jnp.where(starts_chunk, 1.0, carry.decay) * jnp.exp(la_t)

    keys = jnp.concatenate([carry.window_k, k_t[None]])
    values = jnp.concatenate([carry.window_v, v_t[None]])
    gammas = jnp.concatenate([carry.window_gamma, gamma_t[None]])
    grad = _window_grad(config, anchor, keys, values, gammas, coeffs)

    # S_t = θ_t S_{t−1} + g_t;  U_t = NS_k(S_t) or S_t.
    theta = jnp.exp(lt_t) if config.momentum else 0.0
    momentum = _map(lambda s, g: theta * s + g, carry.momentum, grad)
    update = _map(lambda s: fast_weights.newton_schulz(s, config.ns_steps), momentum) if config.muon else momentum

    if config.granularity == "token":
      # Φ_t = α_t Φ_{t−1} − η_t U_t; read after write.
      weights = _map(lambda w, u: jnp.exp(la_t) * w - eta_t * u, carry.weights, update)
      read = weights
    else:
      # Φ changes only at the chunk's last position: Φ_e = (Π α) A − η_e U_e; reads use the anchor.
      ends_chunk = (pos + 1) % chunk == 0
      weights = _map(lambda w, a, u: jnp.where(ends_chunk, decay * a - eta_t * u, w),
                     carry.weights, anchor, update)
      read = anchor
    y_t = fast_weights.apply(config, read, feature_map(q_t[None], config, coeffs), q_t[None])[0]

    new = MemoryState(
        weights=weights, anchor=anchor, momentum=momentum,
        window_k=keys[1:], window_v=values[1:], window_gamma=gammas[1:],
        decay=decay, position=pos + 1)
    return new, y_t

  log_theta = log_theta if log_theta is not None else jnp.zeros_like(log_alpha)
  xs = (q, k, v, log_alpha, eta, log_theta, gamma)
  if not remat_block or remat_block >= q.shape[0]:
    state, y = jax.lax.scan(step, state, xs)
    return y, state
  # Checkpointed blocks of tokens: the backward pass keeps the state only at block boundaries and recomputes
  # each block, instead of keeping every token's weights (the same function; less memory, more compute).
  length, block = q.shape[0], remat_block
  full = length // block * block
  blocked = jax.tree_util.tree_map(lambda x: x[:full].reshape((full // block, block) + x.shape[1:]), xs)
  state, y = jax.lax.scan(jax.checkpoint(lambda c, x: jax.lax.scan(step, c, x)), state, blocked)
  y = y.reshape((full,) + y.shape[2:])
  if full < length:
    state, y_tail = jax.lax.scan(step, state, jax.tree_util.tree_map(lambda x: x[full:], xs))
    y = jnp.concatenate([y, y_tail])
  return y, state


def reference_memory(q, k, v, gates: Gates, state: MemoryState, config: MemoryConfig, feature_coeffs,
                     remat_block: int = 0):
  """Per-token memory over q, k [B, T, H, K], v [B, T, H, V]; returns (y [B, T, H, V] in the state's dtype, state).

  remat_block > 0 checkpoints blocks of that many tokens for the backward pass (memory ∝ T / block + block)."""
  dtype = state.window_k.dtype
  to_bht = lambda x: jnp.moveaxis(x.astype(dtype), 2, 1)  # [B, T, H, ...] → [B, H, T, ...]
  position = state.position
  head_state = state._replace(position=None)

  def one_head(coeffs, st, *xs):
    return _head_scan(config, coeffs, st._replace(position=position), *xs, remat_block=remat_block)

  gate_list = [gates.log_alpha, gates.eta, gates.log_theta, gates.gamma]
  inputs = [to_bht(x) for x in (q, k, v)] + [None if g is None else to_bht(g) for g in gate_list]
  gate_axes = [None if g is None else 0 for g in gate_list]
  over_heads = jax.vmap(one_head, in_axes=(0 if feature_coeffs is not None else None, 0, 0, 0, 0, *gate_axes))
  over_batch = jax.vmap(over_heads, in_axes=(None, 0, 0, 0, 0, *gate_axes))
  y, out = over_batch(feature_coeffs, head_state, *inputs)
  # position is identical for every (b, h); keep one scalar.
  out = out._replace(position=out.position[0, 0])
  return jnp.moveaxis(y, 1, 2), out
