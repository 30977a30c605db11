"""The public memory op: one entry point, several implementations (SPEC.md §1–§3, §5).

    y, state = memory_op(q, k, v, gates, init_weights, config=..., feature_coeffs=..., state=None)

``implementation`` selects the path: ``reference`` (per-token scan, the definition), ``xla`` (chunk-parallel
dual form), ``pallas`` (the kernels of ``pallas_kernels.omega_chunk``; in the interpreter on CPU), or ``auto``:
the kernels for linear memories on a GPU where they cover the call, else ``xla`` (``explain_implementation``
says which and why).
Model code calls only this.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from atlas_jax.memory.chunked import chunked_memory
from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.reference import reference_memory
from atlas_jax.memory.sharded import mesh_context_size, per_block
from atlas_jax.memory.state import Gates, MemoryState, check_weights, init_state

Implementation = Literal["auto", "reference", "xla", "pallas"]
IMPLEMENTATIONS = ("auto", "reference", "xla", "pallas")


def explain_implementation(implementation: str, config: MemoryConfig, *, fresh_state: bool = True,
                           dtype=jnp.float32, backend: str | None = None, devices: int | None = None,
                           key_dim: int | None = None) -> tuple[str, str]:
  """(the concrete path, why): what ``implementation`` resolves to for this call, with the reason.

  backend, devices: default to JAX's default backend and its device count. key_dim: K of the call, to check the
  kernels' tile sizes against those measured (``memory_op`` passes it; None skips the check).

  ``auto`` resolves to ``pallas`` for a linear memory on GPUs when the kernels cover the call at tile sizes
  compiled there (P ≤ 128 after padding, C ≤ 64), else ``xla``. On several devices the kernels run inside
  ``jax.shard_map``, one (batch, heads) block per device, which needs the mesh of ``jax.set_mesh`` and the
  logical rules of ``atlas_jax.sharding.logical_rules`` (as the training loop sets them); outside that context
  several devices stay on xla, since XLA's SPMD partitioner does not split a ``pallas_call`` (it would gather the
  inputs onto every device). On an H200 (2026-11-27, BENCHMARKS.md) the linear kernels
  ran 1.3–1.7× the xla path's speed forward+backward and 1.5–2.1× forward (B = 2, H = 16, K = V = 128,
  C = 64), and a delta-style layer about 3× forward+backward (before the coefficients outside the kernels moved
  to exact float32 and y to a float32 output; not yet remeasured); the mlp kernels exceeded the card's shared memory at
  every size tried (K = 32–64, C = 32–64), so MLP memories stay on xla.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r}; expected one of {IMPLEMENTATIONS}.")
  backend = backend or jax.default_backend()
  if implementation == "pallas":
    from pallas_kernels.omega_chunk.ops import unsupported_reason  # lazy: no Pallas import
    reason = unsupported_reason(config, fresh_state=fresh_state, dtype=dtype, backend=backend)
    return "pallas", f"requested, but the kernels cannot run this call ({reason}): memory_op raises" if reason else (
        "requested")
  if implementation != "auto":
    return implementation, "requested"
  if backend == "cpu":
    return "xla", "on CPU the Pallas kernels run only in the (slow) interpreter"
  from pallas_kernels.omega_chunk.ops import untimed_sizes_reason, unsupported_reason  # lazy: no Pallas import
  reason = unsupported_reason(config, fresh_state=fresh_state, dtype=dtype, backend=backend)
  if reason:
    return "xla", reason
  opt_in = "the Pallas kernels cover this call but are opt-in (implementation='pallas')"
  if config.kind != "linear" or backend != "gpu":
    return "xla", f"{opt_in} for kind={config.kind!r} on {backend}: not timed ahead of xla (BENCHMARKS.md)"
  if (jax.device_count() if devices is None else devices) > 1 and mesh_context_size() <= 1:
    return "xla", (f"{opt_in} here: several devices but no jax.set_mesh with atlas_jax.sharding.logical_rules, "
                   "under which each device would run its own (batch, heads) block; without them XLA's SPMD "
                   "partitioner does not split a pallas_call")
  if key_dim is not None and (why := untimed_sizes_reason(config, key_dim)):
    return "xla", f"{opt_in} here: {why}"
  return "pallas", "linear memory on GPU: the kernels ran ahead of xla on an H200 (BENCHMARKS.md)"


def resolve_implementation(implementation: str, config: MemoryConfig, **call) -> str:
  """The concrete path ``implementation`` stands for; ``call``: ``explain_implementation``'s keywords."""
  return explain_implementation(implementation, config, **call)[0]


def check_inputs(q, k, v, gates: Gates, init_weights, config: MemoryConfig, feature_coeffs, state):
  """memory_op's argument checks (shapes, dtypes, gates, weights, state), at trace time; the Pallas entry point
  runs them too."""
  if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
    raise ValueError(f"expected q, k [B, T, H, K] and v [B, T, H, V]; got q {q.shape}, k {k.shape}, v {v.shape}.")
  if not all(jnp.issubdtype(x.dtype, jnp.floating) for x in (q, k, v)):
    raise ValueError(f"q, k and v must be floating point; got {q.dtype}, {k.dtype}, {v.dtype}.")
  batch, length, heads, key_dim = q.shape
  value_dim = v.shape[-1]
  for name in ("log_alpha", "eta", "gamma", "log_theta"):
    gate = getattr(gates, name)
    if gate is None:
      if name != "log_theta":  # only θ is optional (momentum off)
        raise ValueError(f"gates.{name} is None; log_alpha, eta and gamma are required [B, T, H] arrays.")
      continue
    if gate.shape != (batch, length, heads):
      raise ValueError(f"gate {name} has shape {gate.shape}; expected [B, T, H] = {(batch, length, heads)}.")
  if config.momentum and gates.log_theta is None:
    raise ValueError("config.momentum=True needs gates.log_theta (log of the momentum decay θ).")
  if not config.momentum and gates.log_theta is not None:
    raise ValueError("gates.log_theta is given, but config.momentum=False would ignore it; pass None, or set "
                     "momentum=True.")
  if config.feature_map == "identity" and feature_coeffs is not None:
    raise ValueError("feature_coeffs is given, but feature_map='identity' has no coefficients and would ignore "
                     "them; pass None, or use feature_map='polynomial'.")
  if config.residual and key_dim != value_dim:
    raise ValueError(f"residual memory needs K == V; got K={key_dim}, V={value_dim} (set residual=False).")
  check_weights(init_weights, config, key_dim, value_dim, heads)
  if config.feature_map == "polynomial":
    if feature_coeffs is None or feature_coeffs.shape != (heads, config.num_coeffs):
      got = None if feature_coeffs is None else feature_coeffs.shape
      raise ValueError(f"polynomial φ needs feature_coeffs [H, p+1] = {(heads, config.num_coeffs)}; got {got}.")
  if state is not None:
    _check_state(state, init_weights, config, batch, heads, key_dim, value_dim)


def _check_state(state: MemoryState, init_weights, config: MemoryConfig, batch, heads, key_dim, value_dim):
  """A state made for another config, batch, head count or width is named here, not deep in the scan."""
  if not isinstance(state, MemoryState):
    raise ValueError(f"state must be the MemoryState a previous call returned (or init_state's); got "
                     f"{type(state).__name__}.")
  if set(state.weights) != set(init_weights):
    raise ValueError(f"state holds weights {sorted(state.weights)}, but kind={config.kind!r} has "
                     f"{sorted(init_weights)}: a state of another memory config.")
  carry = config.window - 1
  expected = {f"weights[{name!r}]": (state.weights[name].shape, (batch, heads) + w.shape[1:])
              for name, w in init_weights.items()}
  expected["window_k"] = (state.window_k.shape, (batch, heads, carry, key_dim))
  expected["window_v"] = (state.window_v.shape, (batch, heads, carry, value_dim))
  for name, (got, want) in expected.items():
    if tuple(got) != want:
      raise ValueError(f"state.{name} has shape {tuple(got)}; this call needs {want} ([B, H, …] with B={batch}, "
                       f"H={heads}, K={key_dim}, V={value_dim}, W − 1={carry}): the state was made for another "
                       "batch, head count, width or window.")


def memory_op(q: jax.Array, k: jax.Array, v: jax.Array, gates: Gates, init_weights: dict[str, jax.Array], *,
              config: MemoryConfig, feature_coeffs: jax.Array | None = None, state: MemoryState | None = None,
              implementation: Implementation = "auto", block_size: int | None = None,
              remat: bool = False, head_groups: int = 1) -> tuple[jax.Array, MemoryState]:
  """Run the ATLAS memory over a sequence (or a piece of one) and return its outputs and state.

  Args:
    q, k: queries and keys [B, T, H, K] (already normalised by the layer), any float dtype.
    v: values [B, T, H, V].
    gates: per-token gates [B, T, H] (see ``Gates``), float32 recommended.
    init_weights: Φ_init, {name: [H, m, n]} — ``W`` [H, V, P] (linear) or ``W1`` [H, V, F], ``W2`` [H, F, P]
      (and ``W3`` [H, F, P] for gated_mlp). The initial state when ``state`` is None; always required (it
      fixes the shapes, and is checked against ``state``).
    config: the static memory definition.
    feature_coeffs: polynomial φ coefficients a [H, p+1] (non-negative); None for the identity map.
    state: the state returned by a previous call; None starts a sequence at position 0.
    implementation: ``auto`` | ``reference`` | ``xla`` | ``pallas`` (raises NotImplementedError, with the
      reason, for calls the kernels do not cover; see ``explain_implementation``).
    block_size: xla only (ignored by the other paths), rows per scan step (a divisor of C); does not change the
      result.
    remat: rematerialise in the backward pass: xla, each scan step (less memory, usually faster on CPU);
      reference, blocks of 4·C tokens (its backward otherwise keeps every token's weights); pallas ignores it:
      it keeps its kernel inputs (q, k, v and the per-chunk coefficients and scores, [C, C] per chunk), autodiff's
      [C, C] intermediates of those coefficients and each chunk's starting Φ and S, and recomputes the rest of
      each chunk in the backward kernel.
    head_groups: xla only (ignored by the other paths), run this many independent scans over equal groups of
      heads (a divisor of H), which XLA may execute concurrently (on the 2-core CPU of BENCHMARKS.md, 2 groups
      were not faster). Does not change the result.

  Returns:
    y [B, T, H, V] in q's dtype (y_t = M(q_t; Φ_t), read after write), and the state after the last token.
    Fast weights, momentum and all inner-loop work are float32 whatever the input dtype.
  """
  check_inputs(q, k, v, gates, init_weights, config, feature_coeffs, state)
  dtype = next(iter(init_weights.values())).dtype if state is None else state.window_k.dtype
  impl = resolve_implementation(implementation, config, fresh_state=state is None,
                                dtype=jnp.promote_types(q.dtype, dtype), key_dim=q.shape[-1])
  if impl == "pallas" and q.shape[1] and state is not None:  # pallas_memory checks everything else
    from pallas_kernels.omega_chunk.ops import unsupported_reason  # lazy, see above
    reason = unsupported_reason(config, fresh_state=False, dtype=dtype)
    raise NotImplementedError(f"implementation='pallas': {reason}.")

  def local(q, k, v, gates, init_weights, feature_coeffs, state):  # one device's (batch, heads) block
    batch, length, _, key_dim = q.shape
    if impl == "pallas" and length:
      from pallas_kernels.omega_chunk.ops import pallas_memory  # lazy, see above
      return pallas_memory(q, k, v, gates, init_weights, config, feature_coeffs)
    static_position = None
    if state is None:
      state = init_state(config, init_weights, batch, key_dim, v.shape[-1])
      static_position = 0
    if feature_coeffs is not None:
      feature_coeffs = feature_coeffs.astype(state.window_k.dtype)
    if length == 0:
      return jnp.zeros(v.shape, q.dtype), state
    if impl == "reference":
      y, state = reference_memory(q, k, v, gates, state, config, feature_coeffs,
                                  remat_block=config.chunk_size * 4 if remat else 0)
    else:
      y, state = chunked_memory(q, k, v, gates, state, config, feature_coeffs, static_position=static_position,
                                block_size=block_size, remat=remat, head_groups=head_groups)
    return y.astype(q.dtype), state

  return per_block(local, q, k, v, gates, init_weights, feature_coeffs, state)
