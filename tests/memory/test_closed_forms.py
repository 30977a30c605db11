"""Closed forms the memory must reduce to, and the building blocks' own identities (SPEC.md §2, §3.5)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atlas_jax.memory import MemoryConfig, feature_dim, feature_map, memory_op, newton_schulz
from atlas_jax.memory.coefficients import cumsum, segsum
from atlas_jax.memory.fast_weights import gelu_and_grad, silu_grad
from atlas_jax.memory.feature_maps import kernel
from tests.helpers import memory_inputs, x64


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_gated_delta_rule(implementation):
  """W = 1, C = 1, linear, identity, no momentum: Φ_t = α_t Φ_{t−1} − η_t γ_t (Φ_{t−1} k_t − v_t) k_tᵀ."""
  config = MemoryConfig(kind="linear", window=1, chunk_size=1)
  with x64():
    q, k, v, gates, weights, _ = memory_inputs(config, length=19, dtype=jnp.float64, seed=4)
    y, state = memory_op(q, k, v, gates, weights, config=config, implementation=implementation)
    q, k, v = (np.asarray(x) for x in (q, k, v))
    alpha, eta, gamma = (np.asarray(x) for x in (jnp.exp(gates.log_alpha), gates.eta, gates.gamma))
    batch, length, heads, _ = q.shape
    expected = np.zeros_like(v)
    final = np.zeros_like(np.asarray(state.weights["W"]))
    for b, h in itertools.product(range(batch), range(heads)):
      w = np.asarray(weights["W"][h])
      for t in range(length):
        w = alpha[b, t, h] * w - eta[b, t, h] * gamma[b, t, h] * np.outer(w @ k[b, t, h] - v[b, t, h], k[b, t, h])
        expected[b, t, h] = w @ q[b, t, h]
      final[b, h] = w
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(state.weights["W"]), final, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("degree,drop_constant", [(1, False), (2, False), (2, True), (3, False), (3, True)])
def test_polynomial_kernel_identity(degree, drop_constant):
  """φ(x)·φ(y) = Σ_i a_i (x·y)^i exactly, and P = Σ_i C(K+i−1, i)."""
  config = MemoryConfig(feature_map="polynomial", degree=degree, drop_constant=drop_constant)
  with x64():
    key_x, key_y, key_a = jax.random.split(jax.random.PRNGKey(degree), 3)
    x = jax.random.normal(key_x, (5, 6), jnp.float64)
    y = jax.random.normal(key_y, (5, 6), jnp.float64)
    coeffs = jnp.abs(jax.random.normal(key_a, (degree + 1,), jnp.float64))
    phi_x, phi_y = feature_map(x, config, coeffs), feature_map(y, config, coeffs)
    assert phi_x.shape == (5, feature_dim(config, 6))
    np.testing.assert_allclose(jnp.sum(phi_x * phi_y, -1), kernel(x, y, config, coeffs), rtol=1e-12)
    dot = jnp.sum(x * y, -1)
    expected = sum(coeffs[i] * dot**i for i in range(1 if drop_constant else 0, degree + 1))
    np.testing.assert_allclose(jnp.sum(phi_x * phi_y, -1), expected, rtol=1e-12)


def test_feature_dim_of_degree_two():
  assert feature_dim(MemoryConfig(feature_map="polynomial", degree=2), 64) == 1 + 64 + 64 * 65 // 2  # degrees 0, 1, 2
  assert feature_dim(MemoryConfig(feature_map="identity"), 64) == 64


@pytest.mark.parametrize("shape", [(8, 24), (24, 8), (3, 16, 32)])
def test_newton_schulz_is_near_orthogonal(shape):
  """NS-5 maps a well-conditioned rectangular matrix to singular values near 1 (Muon's quintic: ≈ 0.68–1.13)."""
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, shape) * 3.0
  out = newton_schulz(x, 5)
  singular = np.linalg.svd(np.asarray(out), compute_uv=False)
  assert singular.min() > 0.6 and singular.max() < 1.25
  # Orientation changes cost, not the result.
  np.testing.assert_allclose(newton_schulz(jnp.swapaxes(x, -1, -2), 5), jnp.swapaxes(out, -1, -2), atol=1e-5)
  # Scale-free: NS(cX) = NS(X).
  np.testing.assert_allclose(newton_schulz(10.0 * x, 5), out, atol=1e-4)


def _numpy_ns(x: np.ndarray, k: int) -> np.ndarray:
  """SPEC §3.5 literally, in float64 numpy, for one matrix."""
  a, b, c = 3.4445, -4.7750, 2.0315
  wide = x if x.shape[0] <= x.shape[1] else x.T
  wide = wide / (np.linalg.norm(wide) + 1e-7)
  for _ in range(k):
    gram = wide @ wide.T
    wide = a * wide + (b * gram + c * gram @ gram) @ wide
  return wide if x.shape[0] <= x.shape[1] else wide.T


@pytest.mark.parametrize("steps", [1, 5])
def test_newton_schulz_equals_the_spec_iteration(steps):
  """The reference and the xla path share newton_schulz, so comparing them cannot see a wrong iteration count or
  coefficient: check it against SPEC §3.5 written in numpy (float64, batched and both orientations)."""
  with x64():
    x = jax.random.normal(jax.random.PRNGKey(steps), (2, 6, 10), jnp.float64)
    for batch in (x, jnp.swapaxes(x, -1, -2)):
      got = np.asarray(newton_schulz(batch, steps))
      for i in range(2):
        np.testing.assert_allclose(got[i], _numpy_ns(np.asarray(batch[i]), steps), rtol=1e-10, atol=1e-12)


def test_newton_schulz_of_zero_has_finite_gradient():
  grad = jax.grad(lambda x: jnp.sum(newton_schulz(x, 5)))(jnp.zeros((4, 6)))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_activation_derivatives():
  x = jnp.linspace(-6.0, 6.0, 101)
  value, grad = gelu_and_grad(x)
  np.testing.assert_allclose(value, jax.nn.gelu(x), atol=1e-6)
  np.testing.assert_allclose(grad, jax.vmap(jax.grad(jax.nn.gelu))(x), atol=1e-6)
  np.testing.assert_allclose(silu_grad(x), jax.vmap(jax.grad(jax.nn.silu))(x), atol=1e-6)


def test_segsum_is_stable_under_underflow():
  """Products of gates down to e^{−400} give exact zeros in float32, with finite gradients (CHUNKED.md §C.4)."""
  log_gate = jnp.full((16,), -25.0)
  decay = jnp.exp(segsum(log_gate))
  assert np.all(np.isfinite(np.asarray(decay)))
  np.testing.assert_allclose(np.diag(np.asarray(decay)), 1.0)
  assert float(decay[15, 0]) == 0.0 and float(decay[0, 15]) == 0.0
  grad = jax.grad(lambda x: jnp.sum(jnp.exp(segsum(x))))(log_gate)
  assert np.all(np.isfinite(np.asarray(grad)))
  with x64():
    x = jax.random.normal(jax.random.PRNGKey(0), (6,), jnp.float64)
    expected = np.array([[np.sum(np.asarray(x)[j + 1:t + 1]) if j <= t else -np.inf for j in range(6)]
                         for t in range(6)])
    np.testing.assert_allclose(np.asarray(segsum(x)), expected, rtol=1e-12)


def test_segsum_and_cumsum_take_minus_infinity():
  """A gate of exactly 0 (log −∞) cuts every product through it to an exact 0, without NaN (both are matmuls
  inside, where 0 · −∞ would be NaN)."""
  x = jnp.array([-0.5, -1.0, -jnp.inf, -0.25, -2.0])
  decay = np.asarray(jnp.exp(segsum(x)))
  assert not np.any(np.isnan(decay))
  assert decay[3, 1] == 0.0 and decay[4, 0] == 0.0  # spans position 2
  np.testing.assert_allclose(decay[4, 2], np.exp(-2.25), rtol=1e-6)  # starts after it
  np.testing.assert_allclose(np.asarray(jnp.exp(cumsum(x))), [np.exp(-0.5), np.exp(-1.5), 0, 0, 0], rtol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(jnp.exp(segsum(x))) + jnp.sum(jnp.exp(cumsum(x))))(x)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_tiny_retention_stays_finite():
  """α as small as e^{−30} per token (ᾱ underflows inside a chunk) gives finite outputs and gradients."""
  config = MemoryConfig(kind="mlp", window=4, chunk_size=16, momentum=True)
  q, k, v, gates, weights, _ = memory_inputs(config, length=40)
  gates = gates._replace(log_alpha=jnp.full_like(gates.log_alpha, -30.0))
  loss = lambda g: jnp.sum(memory_op(q, k, v, g, weights, config=config, implementation="xla")[0])
  value, grad = jax.value_and_grad(loss)(gates)
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree_util.tree_leaves(grad))
