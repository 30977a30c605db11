"""Random, layer-like inputs for the memory op (used by the tests and the benchmarks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.fast_weights import weight_shapes
from atlas_jax.memory.feature_maps import feature_dim
from atlas_jax.memory.state import Gates


def memory_inputs(config: MemoryConfig, *, batch=2, length=23, heads=2, key_dim=4, value_dim=4, hidden=8,
                  seed=0, dtype=jnp.float32):
  """Random q, k (unit-norm), v, gates, Φ_init and φ coefficients for `config`.

  Gates are bounded the way a layer bounds them: α near 1, η ≲ 0.3/W, θ ≈ 0.5–0.9, γ ∈ (0, 1).
  """
  keys = jax.random.split(jax.random.PRNGKey(seed), 12)
  normal = lambda i, shape: jax.random.normal(keys[i], shape, dtype)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q = unit(normal(0, (batch, length, heads, key_dim)))
  k = unit(normal(1, (batch, length, heads, key_dim)))
  v = normal(2, (batch, length, heads, value_dim))
  gate_shape = (batch, length, heads)
  gates = Gates(
      log_alpha=-jax.nn.softplus(-(3.0 + normal(3, gate_shape))),
      eta=0.3 * jax.nn.sigmoid(normal(4, gate_shape)) / config.window,
      gamma=jax.nn.sigmoid(normal(5, gate_shape)),
      log_theta=-jax.nn.softplus(-(1.0 + normal(6, gate_shape))) if config.momentum else None,
  )
  shapes = weight_shapes(config, value_dim, feature_dim(config, key_dim), hidden)
  weights = {name: 0.3 * normal(7 + i, (heads,) + shape) for i, (name, shape) in enumerate(shapes.items())}
  coeffs = None
  if config.num_coeffs:
    coeffs = 0.2 + jnp.abs(normal(11, (heads, config.num_coeffs)))
  return q, k, v, gates, weights, coeffs
