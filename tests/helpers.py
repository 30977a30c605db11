"""Random inputs and comparison helpers shared by the tests."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atlas_jax.memory.testing import memory_inputs  # noqa: F401  (re-exported for the tests)


@contextlib.contextmanager
def x64():
  """float64 inside the block (equivalence tests compare exact formulas at float64 precision)."""
  with jax.enable_x64(True):
    yield


def max_rel_error(a, b) -> float:
  """max |a − b| / max(1, max |b|) over every leaf of two pytrees."""
  errors = jax.tree_util.tree_map(
      lambda x, y: float(jnp.max(jnp.abs(x - y)) / max(1.0, float(jnp.max(jnp.abs(y))))) if np.size(y) else 0.0,
      a, b)
  return max(jax.tree_util.tree_leaves(errors), default=0.0)


def compared_state(state):
  """The parts of a state that every implementation must agree on (SPEC.md §5)."""
  return (state.weights, state.anchor, state.momentum, state.position)


def perturbed(module, seed: int):
  """Random offsets on the parameters that start constant (gate biases, norm and output scales), so that every
  one of them shows in the outputs: θ's gate reading γ's column, say, must change the result."""
  key = jax.random.PRNGKey(seed)
  for i, (path, p) in enumerate(nnx.to_flat_state(nnx.state(module, nnx.Param))):
    if path[-1] in ("bias", "y_scale", "scale"):
      p.set_value(p[...] + 0.5 * jax.random.normal(jax.random.fold_in(key, i), p.shape))
  return module
