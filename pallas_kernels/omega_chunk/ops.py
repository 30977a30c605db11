"""The memory op's ``pallas`` implementation: prepares the memory op's inputs for the kernels and back.

    unsupported_reason(config, ...) → None, or why the kernels cannot run these inputs
    pallas_memory(q, k, v, gates, init_weights, config, feature_coeffs) → (y [B, T, H, V], MemoryState)

Covered: the ``linear``, ``mlp`` and ``gated_mlp`` memories (identity or polynomial φ, l2 or dot bias, residual
or not, momentum and retention, any W with W − 1 ≤ C, token granularity, Muon off), from a fresh state
(position 0), float32 or bfloat16 inputs, validated as ``memory_op`` validates them. ``auto`` takes them for linear
memories on GPU at the tile sizes measured there (``untimed_sizes_reason``; on an H200 they ran 1.3–1.7× the xla
path's speed forward+backward, measured before the coefficients moved to exact float32; on several devices each runs
its own (batch, heads) block under ``shard_map``, ``sharded.py``). MLP memories run on them when asked for by name
(one program per head keeps W1, W2 (W3) and their momenta: compiled, they exceeded an H200's 227 KiB of shared
memory at every size tried, K = 32–64, C = 32–64; BENCHMARKS.md). The kernels are written for Triton (GPU); on CPU
they run in the Pallas interpreter; on TPU ``auto`` takes the xla path and ``implementation="pallas"`` raises
NotImplementedError (the Mosaic TPU backend needs (8, 128)-aligned VMEM tiles and would not hold these
whole-sequence blocks; a TPU variant is not written).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.feature_maps import feature_dim, feature_map
from atlas_jax.memory.op import check_inputs  # memory_op's own input checks
from atlas_jax.memory.state import Gates, MemoryState
from pallas_kernels.omega_chunk.kernel import BlockSizes, omega_chunk

def unsupported_reason(config: MemoryConfig, *, fresh_state: bool, dtype, backend: str | None = None) -> str | None:
  """Why the Pallas kernels cannot run this call (None when they can); backend defaults to JAX's default."""
  backend = backend or jax.default_backend()
  if backend == "tpu":
    return "no TPU (Mosaic) variant of the Omega kernels (implementation='auto' takes the xla path on TPU)"
  if config.muon:
    return "muon=True: Newton–Schulz per position is not in the kernels"
  if config.max_grad_norm is not None:
    return "max_grad_norm: the kernels do not bound the per-token gradients"
  if config.granularity != "token":
    return f"granularity={config.granularity!r}: the kernels implement token granularity"
  if config.window - 1 > config.chunk_size:
    return f"window W={config.window} > C + 1 = {config.chunk_size + 1}: the carry must lie in the previous chunk"
  if not fresh_state:
    return "streaming from a stored state (position > 0) runs on the xla path"
  if jnp.dtype(dtype) == jnp.float64:
    return "float64 inputs: the kernels compute in float32"
  if backend == "gpu":
    c = config.chunk_size
    if c < 16 or c & (c - 1):
      return f"chunk_size C={c}: Triton tiles need a power of two ≥ 16"
  return None


def untimed_sizes_reason(config: MemoryConfig, key_dim: int) -> str | None:
  """Why ``auto`` should not pick the compiled kernels at these sizes (None inside the measured range).

  On an H200 the linear kernels fit the shared memory at C = 64 and P = 128 after padding (one TF32 pass, BV = 16;
  BV = 64 already asked for 256 KiB of the 227 KiB); larger [C, P] tiles were not compiled.
  """
  p = padded_size(feature_dim(config, key_dim))
  if p > 128 or config.chunk_size > 64:
    return (f"P = {p} after padding and C = {config.chunk_size}: the compiled kernels were measured only at "
            "P ≤ 128, C ≤ 64 (larger [C, P] tiles may exceed the GPU's shared memory)")
  return None


def padded_size(n: int) -> int:
  """The compiled kernels' size for a dimension n: a power of two ≥ 16 (Triton tiles need it)."""
  return max(16, _next_power_of_two(n))


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _next_power_of_two(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def _per_head(x, length):
  """[B, T, H, ...] → [B·H, T_pad, ...] (zero rows appended)."""
  batch, t, heads = x.shape[:3]
  x = jnp.pad(x, [(0, 0), (0, length - t)] + [(0, 0)] * (x.ndim - 2))
  x = jnp.moveaxis(x, 2, 1)
  return x.reshape((batch * heads, length) + x.shape[3:])


def _last_rows(length: int, padded: int, chunk: int):
  """sel [T_pad]: 1 at each chunk's last valid row (row T − 1 in the last chunk)."""
  t = jnp.arange(padded)
  return ((t == length - 1) | ((t % chunk == chunk - 1) & (t < length))).astype(jnp.float32)


def pallas_memory(q, k, v, gates: Gates, init_weights, config: MemoryConfig, feature_coeffs, *,
                  block_sizes: BlockSizes | None = None, interpret: bool | None = None, pad_to_power_of_two=None):
  """The memory op from a fresh state on the Pallas kernels (arguments as ``memory_op``; q, k [B, T, H, K]).

  pad_to_power_of_two: pad P, V (and F) to powers of two ≥ 16 with zeros (Triton tiles need it; zero features,
    values and hidden units leave every result unchanged). Default: on when not interpreting.
  """
  check_inputs(q, k, v, gates, init_weights, config, feature_coeffs, None)
  reason = unsupported_reason(config, fresh_state=True,
                              dtype=jnp.promote_types(q.dtype, next(iter(init_weights.values())).dtype))
  if reason:
    raise NotImplementedError(f"implementation='pallas': {reason}.")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  if pad_to_power_of_two is None:
    pad_to_power_of_two = not interpret
  batch, length, heads, _ = q.shape
  value_dim = v.shape[-1]
  chunk = config.chunk_size
  padded = _round_up(length, chunk)
  f32 = jnp.float32

  # φ in float32 (as the xla path); residual l2 memories fit v − r(k) (CHUNKED.md §C.1), and read r(q) + M(q).
  if config.feature_map == "identity":
    phi_q, phi_k = q, k  # upcast inside the kernel: bf16 inputs move half the bytes
  else:
    phi_q = feature_map(q.astype(f32), config, feature_coeffs)
    phi_k = feature_map(k.astype(f32), config, feature_coeffs)
  target = v.astype(f32) - k.astype(f32) if config.residual and config.bias == "l2" else v
  names = config.weight_names
  p = init_weights[names[-1]].shape[-1]
  hidden = init_weights["W1"].shape[-1] if config.kind != "linear" else None
  pad = padded_size if pad_to_power_of_two else (lambda n: n)
  sizes = {value_dim: pad(value_dim), p: pad(p)}
  if hidden is not None:
    sizes[hidden] = pad(hidden)

  def weight(name):  # Φ_init [H, m, n] → [B·H, m', n'] float32, zero-padded
    w = init_weights[name].astype(f32)
    w = jnp.broadcast_to(w[None], (batch,) + w.shape).reshape((batch * heads,) + w.shape[1:])
    m, n = w.shape[1:]
    return jnp.pad(w, [(0, 0), (0, sizes[m] - m), (0, sizes[n] - n)])

  def rows(x, width_to):
    x = _per_head(x, padded)
    return jnp.pad(x, [(0, 0), (0, 0), (0, width_to - x.shape[-1])])

  gate = lambda x: _per_head(x.astype(f32), padded)
  log_theta = gates.log_theta if config.momentum else jnp.zeros_like(gates.log_alpha)
  log_alpha = gate(gates.log_alpha)
  weights = tuple(weight(n) for n in names)
  y, w, s, anchor = omega_chunk(
      rows(phi_q, sizes[p]), rows(phi_k, sizes[p]), rows(target, sizes[value_dim]), gate(gates.gamma), log_alpha,
      gate(gates.eta), gate(log_theta), _last_rows(length, padded, chunk), weights,
      tuple(jnp.zeros_like(x) for x in weights),
      kind=config.kind, chunk=chunk, window=config.window, momentum=config.momentum, bias=config.bias,
      block_sizes=block_sizes, interpret=interpret)

  y = jnp.moveaxis(y[:, :length, :value_dim].reshape(batch, heads, length, value_dim), 1, 2)  # float32
  if config.residual:
    y = y + q.astype(f32)  # r(q) added in float32, then one rounding to q's dtype (as the xla path)

  def unpad(mats):
    out = {}
    for name, x in zip(names, mats):
      m, n = init_weights[name].shape[1:]
      out[name] = x[:, :m, :n].reshape(batch, heads, m, n)
    return out

  return y.astype(q.dtype), _final_state(k, v, gates, log_alpha, length, config, unpad(w), unpad(s),
                                         unpad(anchor))


def _final_state(k, v, gates: Gates, log_alpha, length, config: MemoryConfig, w, s, anchor) -> MemoryState:
  """The MemoryState after T tokens: the carry is the last W − 1 raw tokens (zeros before the start); decay is
  Π α over the last chunk's tokens, exp(Σ log α) (log α [BH, T_pad]; −∞ gives exactly 0)."""
  batch, _, heads, _ = k.shape
  carried = config.window - 1
  f32 = jnp.float32

  def window(x):  # [B, T, H, ...] → the last W − 1 rows, oldest first, [B, H, W − 1, ...]
    x = jnp.pad(x.astype(f32), [(0, 0), (carried, 0)] + [(0, 0)] * (x.ndim - 2))[:, x.shape[1]:]
    return jnp.moveaxis(x, 1, 2)

  start = (length - 1) // config.chunk_size * config.chunk_size  # the last chunk's first row
  decay = jnp.exp(jnp.sum(log_alpha[:, start:length], axis=1)).reshape(batch, heads)
  return MemoryState(weights=w, anchor=anchor, momentum=s, window_k=window(k),
                     window_v=window(v), window_gamma=window(gates.gamma), decay=decay,
                     position=jnp.asarray(length, jnp.int32))
