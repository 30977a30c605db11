"""Model FLOPs of the chunked memory op without Muon (CHUNKED.md §C.9), and the matmul rate they are compared with.

Per chunk per head, N = C + W − 1 slots, [l2] = 1 for the l2 bias, m̄ = 1 with momentum, FLOPs = 2 per
multiply-add; coefficients add 2C²N (Λ) and, with momentum, 2C³ (J):

    linear:  2NPV·[l2] + 2CPV(1+m̄) + 2CN(P+V) + 2NPV(1+m̄)
    mlp:     2NPF + 2NFV(1+[l2]) + 2CF(P+V)(1+m̄) + 2CN(P+2F+V) + 2NF(V+P)(1+m̄)

Forward + backward is counted as 3× the forward (the usual convention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from atlas_jax.memory import MemoryConfig
from benchmarks import common


def memory_flops(config: MemoryConfig, *, batch: int, length: int, heads: int, key_dim: int, value_dim: int,
                 hidden: int = 0) -> float:
  """Forward model FLOPs of the memory op over [B, T] tokens (identity φ: P = K)."""
  if config.muon:
    raise ValueError("memory_flops counts the non-Muon path (Muon adds Newton–Schulz per position, §C.9).")
  if config.feature_map != "identity":
    raise ValueError("memory_flops counts identity φ (P = K); polynomial φ widens P (feature_dim).")
  c, p, v, f = config.chunk_size, key_dim, value_dim, hidden
  n = c + config.window - 1
  l2 = 1 if config.bias == "l2" else 0
  m = 1 if config.momentum else 0
  if config.kind == "linear":
    per_chunk = 2 * n * p * v * l2 + 2 * c * p * v * (1 + m) + 2 * c * n * (p + v) + 2 * n * p * v * (1 + m)
  elif config.kind == "mlp":
    per_chunk = (2 * n * p * f + 2 * n * f * v * (1 + l2) + 2 * c * f * (p + v) * (1 + m)
                 + 2 * c * n * (p + 2 * f + v) + 2 * n * f * (v + p) * (1 + m))
  else:
    raise ValueError(f"memory_flops covers kind 'linear' and 'mlp'; got {config.kind!r}.")
  per_chunk += 2 * c * c * n + 2 * c**3 * m
  return per_chunk * (length / c) * heads * batch


def matmul_rate(size: int = 1024, dtype=jnp.float32, repeats: int = 10) -> float:
  """FLOP/s of a size³ matmul in this process (all cores / the whole accelerator)."""
  a = jnp.ones((size, size), dtype)
  f = jax.jit(lambda a: a @ a)
  return 2 * size**3 / common.time_call(f, a, repeats=repeats)
