"""The kernel-form memory (SPEC.md §4) against the finite-feature memory and against softmax attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atlas_jax.kernel_memory import exp_kernel, init_kernel_state, kernel_memory
from atlas_jax.memory import MemoryConfig, memory_op
from atlas_jax.memory.state import Gates
from tests.helpers import max_rel_error, memory_inputs, x64


def _poly_kernel(coeffs):
  """κ(x, y) = Σ_i a_i (x·y)^i: the polynomial φ's kernel, so the kernel form must equal the explicit one."""
  return lambda x, y: sum(coeffs[i] * (x @ y.T) ** i for i in range(coeffs.shape[0]))


_CONFIGS = [
    MemoryConfig(kind="linear", feature_map="polynomial", bias="l2", window=3, chunk_size=4),
    MemoryConfig(kind="linear", feature_map="polynomial", bias="dot", window=1, chunk_size=1, residual=True),
    MemoryConfig(kind="mlp", feature_map="polynomial", bias="l2", window=2, chunk_size=5),
    MemoryConfig(kind="mlp", feature_map="polynomial", bias="dot", window=8, chunk_size=4, residual=False),
]
_IDS = ("linear-l2", "linear-dot", "mlp-l2", "mlp-dot")


def _explicit_reference(config, length, seed):
  """(inputs, the explicit-feature reference's (y, state), the kernel memory's float64 initial state), with the
  φ-side weights at 0 as the kernel form has them. Call under x64."""
  q, k, v, gates, weights, coeffs = memory_inputs(config, length=length, dtype=jnp.float64, seed=seed)
  phi_side = "W" if config.kind == "linear" else "W2"
  weights = {**weights, phi_side: jnp.zeros_like(weights[phi_side])}
  reference = memory_op(q, k, v, gates, weights, config=config, feature_coeffs=coeffs, implementation="reference")
  batch, _, heads, key_dim = q.shape
  state = init_kernel_state(config, weights.get("W1"), batch, heads, length, key_dim, v.shape[-1])
  state = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, state)
  if config.kind == "mlp":  # W1 in float64, as the reference's
    w1_rows = jnp.broadcast_to(weights["W1"], (batch,) + weights["W1"].shape)
    state = state._replace(w1=w1_rows, anchor_w1=w1_rows)
  return (q, k, v, gates, coeffs), reference, state


@pytest.mark.parametrize("config", _CONFIGS, ids=_IDS)
def test_kernel_form_equals_explicit_features(config):
  """With κ = the polynomial kernel and the φ-side weights starting at 0, both forms are the same memory."""
  with x64():
    (q, k, v, gates, coeffs), (y_ref, s_ref), state = _explicit_reference(config, length=21, seed=2)
    y, s = kernel_memory(q, k, v, gates, state, config, _poly_kernel, coeffs, static_position=0)
    # Same math, different summation order ((x·y)^i vs φ(x)·φ(y)) amplified through the recurrence: 1e-8.
    assert max_rel_error(y, y_ref) < 1e-8
    if config.kind == "mlp":
      assert max_rel_error(s.w1, s_ref.weights["W1"]) < 1e-8


@pytest.mark.parametrize("config", [
    MemoryConfig(kind="mlp", feature_map="polynomial", bias="l2", window=3, chunk_size=4),
    MemoryConfig(kind="linear", feature_map="polynomial", bias="l2", window=2, chunk_size=3),
], ids=("mlp", "linear"))
def test_kernel_form_gradients_equal_explicit_features(config):
  """SPEC.md §5 asks for gradients on every fast path: with respect to q, k, v, the gates, W1 and φ's
  coefficients, the kernel form's equal the explicit-feature reference's."""
  with x64():
    q, k, v, gates, weights, coeffs = memory_inputs(config, length=11, dtype=jnp.float64, seed=2)
    phi_side = "W" if config.kind == "linear" else "W2"
    weights = {**weights, phi_side: jnp.zeros_like(weights[phi_side])}
    w1 = weights.get("W1")
    batch, length, heads, key_dim = q.shape

    def reference(q, k, v, gates, w1, coeffs):
      y, _ = memory_op(q, k, v, gates, {**weights, **({} if w1 is None else {"W1": w1})}, config=config,
                       feature_coeffs=coeffs, implementation="reference")
      return jnp.sum(jnp.sin(y))

    def kernel(q, k, v, gates, w1, coeffs):
      state = init_kernel_state(config, w1, batch, heads, length, key_dim, v.shape[-1])
      state = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, state)
      if w1 is not None:  # the state holds W1 in float32: put the float64 one back, gradient path included
        w1_rows = jnp.broadcast_to(w1, (batch,) + w1.shape)
        state = state._replace(w1=w1_rows, anchor_w1=w1_rows)
      y, _ = kernel_memory(q, k, v, gates, state, config, _poly_kernel, coeffs, static_position=0)
      return jnp.sum(jnp.sin(y))

    argnums = (0, 1, 2, 3, 5) if w1 is None else (0, 1, 2, 3, 4, 5)
    args = (q, k, v, gates, w1, coeffs)
    grad = lambda f: jax.jit(jax.grad(f, argnums))(*args)
    assert max_rel_error(grad(kernel), grad(reference)) < 1e-8


@pytest.mark.parametrize("config", _CONFIGS, ids=_IDS)
def test_streaming_pieces_equal_the_reference(config):
  """Decoding's path (a traced position, anchors in mid-chunk) in pieces of 1, 5, 1, 6 and 6 tokens, against the
  explicit-feature reference in one call: outputs, final W1 and position, float64."""
  with x64():
    (q, k, v, gates, coeffs), (y_ref, s_ref), state = _explicit_reference(config, length=19, seed=5)
    step = jax.jit(lambda *a: kernel_memory(*a, config, _poly_kernel, coeffs))
    ys, begin = [], 0
    for end in (1, 6, 7, 13, 19):
      piece = lambda x: x[:, begin:end]
      y, state = step(piece(q), piece(k), piece(v), Gates(*(None if g is None else piece(g) for g in gates)), state)
      ys.append(y)
      begin = end
    assert max_rel_error(jnp.concatenate(ys, 1), y_ref) < 1e-8
    assert int(state.position) == 19
    if config.kind == "mlp":
      assert max_rel_error(state.w1, s_ref.weights["W1"]) < 1e-8


def test_linear_l2_with_one_slot_is_the_delta_rule_transformer():
  """SPEC §4, linear, l2, W = C = 1, α ≡ γ ≡ 1 (the "Transformer with delta rule"):
  u_i = η_i (v_i − Σ_{j<i} u_j κ(k_j, k_i)) and y_t = Σ_{i≤t} u_i κ(k_i, q_t)."""
  config = MemoryConfig(kind="linear", bias="l2", window=1, chunk_size=1, residual=False)
  with x64():
    q, k, v, gates, _, _ = memory_inputs(config, length=13, dtype=jnp.float64, seed=4)
    gates = gates._replace(log_alpha=jnp.zeros_like(gates.log_alpha), gamma=jnp.ones_like(gates.gamma))
    inv_t = jnp.asarray([0.7, 1.3])
    batch, length, heads, dim = q.shape
    state = init_kernel_state(config, None, batch, heads, length, dim, dim)
    state = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, state)
    y, _ = kernel_memory(q, k, v, gates, state, config, exp_kernel, inv_t, static_position=0)
    qn, kn, vn, eta = (np.asarray(x) for x in (q, k, v, gates.eta))
    want = np.zeros_like(vn)
    for b in range(batch):
      for h in range(heads):
        kappa = lambda x, z: np.exp(inv_t[h] * (x @ z))
        u = np.zeros((length, dim))
        for i in range(length):
          u[i] = eta[b, i, h] * (vn[b, i, h] - sum(u[j] * kappa(kn[b, j, h], kn[b, i, h]) for j in range(i)))
        for t in range(length):
          want[b, t, h] = sum(u[i] * kappa(kn[b, i, h], qn[b, t, h]) for i in range(t + 1))
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)


def test_normalized_linear_dot_is_causal_softmax_attention():
  config = MemoryConfig(kind="linear", bias="dot", window=1, chunk_size=8, residual=False)
  batch, length, heads, dim = 2, 30, 3, 8
  key = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (batch, length, heads, dim)) for kk in key)
  ones = jnp.ones((batch, length, heads))
  gates = Gates(log_alpha=0.0 * ones, eta=ones, gamma=ones)
  inv_t = jnp.full((heads,), 0.5)
  state = init_kernel_state(config, None, batch, heads, length, dim, dim, normalized=True)
  y, _ = kernel_memory(q, k, v, gates, state, config, exp_kernel, inv_t, normalized=True, static_position=0)
  expected = jax.nn.dot_product_attention(q, k, v, scale=0.5, is_causal=True)
  np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)


def test_unsupported_options_raise_clear_errors():
  q, k, v, gates, _, _ = memory_inputs(MemoryConfig(kind="mlp"), length=5)
  inv_t = jnp.ones((q.shape[2],))
  for config, message in ((MemoryConfig(kind="mlp", momentum=True), "no momentum or Muon"),
                          (MemoryConfig(kind="mlp", max_grad_norm=1.0), "max_grad_norm=1.0 is not implemented")):
    with pytest.raises(ValueError, match=message):
      kernel_memory(q, k, v, gates, None, config, exp_kernel, inv_t, static_position=0)
  config = MemoryConfig(kind="linear", chunk_size=2)
  small = init_kernel_state(config, None, q.shape[0], q.shape[2], 4, q.shape[3], v.shape[3])
  with pytest.raises(ValueError, match=r"positions 0…4 do not fit this kernel-memory state, made for 4"):
    kernel_memory(q, k, v, gates, small, config, exp_kernel, inv_t, static_position=0)
