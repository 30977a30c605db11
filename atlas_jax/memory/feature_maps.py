"""Feature maps φ (SPEC.md §2).

``polynomial`` of degree p: φ(x) = concat_{i=0..p} sqrt(a_i) · m_i(x), where m_i lists the degree-i monomials
x_{j1}…x_{ji} over j1 ≤ … ≤ ji (``itertools.combinations_with_replacement`` order), each scaled by the square
root of its multinomial coefficient, so that m_i(x)·m_i(y) = (x·y)^i and φ(x)·φ(y) = Σ_i a_i (x·y)^i exactly.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax.numpy as jnp
import numpy as np

from atlas_jax.memory.config import MemoryConfig


@functools.lru_cache(maxsize=None)
def _monomials(dim: int, degree: int) -> tuple[np.ndarray, np.ndarray]:
  """Index tuples [n_i, i] and sqrt multinomial weights [n_i] of the degree-i monomials over `dim` inputs."""
  combos = list(itertools.combinations_with_replacement(range(dim), degree))
  index = np.asarray(combos, dtype=np.int32).reshape(len(combos), degree)
  weights = []
  for combo in combos:
    counts = np.bincount(np.asarray(combo, dtype=np.int64), minlength=dim)
    multinomial = math.factorial(degree) // math.prod(math.factorial(int(c)) for c in counts)
    weights.append(math.sqrt(multinomial))
  return index, np.asarray(weights, dtype=np.float64)


def feature_dim(config: MemoryConfig, key_dim: int) -> int:
  """P, the width of φ(k) for a key of width K."""
  if config.feature_map == "identity":
    return key_dim
  first = 1 if config.drop_constant else 0
  return sum(math.comb(key_dim + i - 1, i) for i in range(first, config.degree + 1))


def feature_map(x: jnp.ndarray, config: MemoryConfig, coeffs: jnp.ndarray | None) -> jnp.ndarray:
  """φ(x) for x [..., K] with per-call coefficients a [p+1] (broadcast over the leading axes) → [..., P]."""
  if config.feature_map == "identity":
    return x
  if coeffs is None:
    raise ValueError("polynomial feature map needs feature_coeffs (a_0..a_p).")
  first = 1 if config.drop_constant else 0
  blocks = []
  for i in range(first, config.degree + 1):
    scale = jnp.sqrt(coeffs[..., i])[..., None]
    if i == 0:
      block = jnp.ones(x.shape[:-1] + (1,), x.dtype)
    else:
      index, weights = _monomials(x.shape[-1], i)
      block = jnp.asarray(weights, x.dtype) * jnp.prod(x[..., index], axis=-1)
    blocks.append(scale.astype(x.dtype) * block)
  return jnp.concatenate(blocks, axis=-1)


def kernel(x: jnp.ndarray, y: jnp.ndarray, config: MemoryConfig, coeffs: jnp.ndarray | None) -> jnp.ndarray:
  """φ(x)·φ(y) = Σ_i a_i (x·y)^i, computed from the raw vectors (x [..., K], y [..., K])."""
  dot = jnp.sum(x * y, axis=-1)
  if config.feature_map == "identity":
    return dot
  first = 1 if config.drop_constant else 0
  return sum(coeffs[..., i] * dot**i for i in range(first, config.degree + 1))
