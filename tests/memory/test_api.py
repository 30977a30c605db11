"""The public entry point: transformations, dtypes, dispatch and errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from atlas_jax.memory import Gates, MemoryConfig, init_state, memory_op, resolve_implementation
from atlas_jax.memory.fast_weights import clip_scale
from atlas_jax.sharding import DEFAULT_RULES, logical_rules
from tests.helpers import compared_state, max_rel_error, memory_inputs

ATLAS = MemoryConfig(kind="mlp", feature_map="polynomial", window=4, chunk_size=8, momentum=True, muon=True)


def test_vmap_over_an_extra_axis_equals_a_loop():
  inputs = memory_inputs(ATLAS, length=12)
  q, k, v, gates, weights, coeffs = inputs
  stack = lambda x: jnp.stack([x, 0.5 * x])
  batched = jax.vmap(lambda q, k, v, g: memory_op(q, k, v, g, weights, config=ATLAS, feature_coeffs=coeffs)[0])
  y = batched(stack(q), stack(k), stack(v), jax.tree_util.tree_map(stack, gates))
  for i, scale in enumerate((1.0, 0.5)):
    scaled = jax.tree_util.tree_map(lambda x: scale * x, (q, k, v, gates))
    y_i = memory_op(*scaled, weights, config=ATLAS, feature_coeffs=coeffs)[0]
    assert max_rel_error(y[i], y_i) < 1e-5


@pytest.mark.parametrize("implementation", ["xla", "reference"])
def test_remat_gives_the_same_gradients(implementation):
  q, k, v, gates, weights, coeffs = memory_inputs(ATLAS, length=45)  # reference blocks of 4·C = 32, plus a tail

  def loss(weights, remat):
    y, _ = memory_op(q, k, v, gates, weights, config=ATLAS, feature_coeffs=coeffs, remat=remat,
                     implementation=implementation)
    return jnp.sum(y**2)

  plain = jax.jit(jax.grad(lambda w: loss(w, False)))(weights)
  remat = jax.jit(jax.grad(lambda w: loss(w, True)))(weights)
  assert max_rel_error(remat, plain) < 1e-5


@pytest.mark.parametrize("config", [
    ATLAS,
    MemoryConfig(kind="mlp", window=1, chunk_size=8, momentum=True),
    MemoryConfig(kind="linear", window=3, chunk_size=8, momentum=True, granularity="chunk"),
], ids=["atlas-muon", "titans-mlp", "linear-chunk-granularity"])
@pytest.mark.parametrize("length", [32, 45])
def test_aligned_scan_equals_the_general_one(config, length):
  """A fresh call cut into whole chunks keeps the anchor out of the checkpointed step; R = C/2 takes the general
  path (anchor in the carry). Outputs, final state and gradients of every input agree."""
  q, k, v, gates, weights, coeffs = memory_inputs(config, length=length)

  def loss(q, k, v, gates, weights, block_size):
    y, state = memory_op(q, k, v, gates, weights, config=config, feature_coeffs=coeffs, remat=True,
                         block_size=block_size, implementation="xla")
    extra = sum(jnp.sum(jnp.sin(w) * a) + jnp.sum(s**2) for w, a, s in
                zip(state.weights.values(), state.anchor.values(), state.momentum.values()))
    return jnp.sum(y * jnp.cos(y)) + extra, (y, state)

  grad = lambda block: jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True),
                               static_argnums=5)(q, k, v, gates, weights, block)
  (g_aligned, (y_aligned, s_aligned)), (g_general, (y_general, s_general)) = grad(None), grad(4)
  assert max_rel_error(y_aligned, y_general) < 1e-5
  assert max_rel_error((s_aligned.weights, s_aligned.anchor, s_aligned.momentum),
                       (s_general.weights, s_general.anchor, s_general.momentum)) < 1e-5
  assert max_rel_error(g_aligned, g_general) < 1e-4


def test_bfloat16_long_sequence_stays_close_to_float32():
  """bf16 inputs over T = 4096: float32 state, finite outputs within bf16 rounding of the float32 run."""
  config = MemoryConfig(kind="mlp", window=4, chunk_size=64, momentum=True)
  q, k, v, gates, weights, _ = memory_inputs(config, batch=1, length=4096, heads=2, key_dim=16, value_dim=16,
                                             hidden=32)
  run = jax.jit(lambda q, k, v: memory_op(q, k, v, gates, weights, config=config))
  y32, s32 = run(q, k, v)
  y16, s16 = run(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert y16.dtype == jnp.bfloat16 and s16.weights["W1"].dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(y16, np.float32)))
  rel = float(jnp.linalg.norm(y16.astype(jnp.float32) - y32) / jnp.linalg.norm(y32))
  assert rel < 2e-2, rel
  assert max_rel_error(s16.weights, s32.weights) < 5e-2


def test_auto_resolves_to_xla_and_matches_it():
  assert resolve_implementation("auto", ATLAS) == "xla"
  inputs = memory_inputs(ATLAS, length=9)
  a = memory_op(*inputs[:5], config=ATLAS, feature_coeffs=inputs[5], implementation="auto")[0]
  b = memory_op(*inputs[:5], config=ATLAS, feature_coeffs=inputs[5], implementation="xla")[0]
  np.testing.assert_array_equal(a, b)


def test_empty_sequence_returns_the_state_unchanged():
  q, k, v, gates, weights, coeffs = memory_inputs(ATLAS, length=0)
  y, state = memory_op(q, k, v, gates, weights, config=ATLAS, feature_coeffs=coeffs)
  assert y.shape == (2, 0, 2, 4) and int(state.position) == 0


def test_init_state_shapes():
  config = MemoryConfig(kind="gated_mlp", window=3)
  weights = {"W1": jnp.zeros((2, 4, 8)), "W2": jnp.zeros((2, 8, 4)), "W3": jnp.zeros((2, 8, 4))}
  state = init_state(config, weights, batch_size=3, key_dim=4, value_dim=4)
  assert state.weights["W3"].shape == (3, 2, 8, 4)
  assert state.window_k.shape == (3, 2, 2, 4) and state.window_gamma.shape == (3, 2, 2)


@pytest.mark.parametrize("change,message", [
    (lambda q, k, v, g, w, a: (q[..., :3], k, v, g, w, a), "expected q, k"),
    (lambda q, k, v, g, w, a: (q, k, v, g._replace(eta=g.eta[:, :5]), w, a), "gate eta"),
    (lambda q, k, v, g, w, a: (q, k, v, g._replace(log_theta=None), w, a), "log_theta"),
    (lambda q, k, v, g, w, a: (q, k, v, g._replace(gamma=None), w, a), "gates.gamma is None"),
    (lambda q, k, v, g, w, a: (q, k, v, g, {"W": w["W1"]}, a), "init_weights has"),
    (lambda q, k, v, g, w, a: (q, k, v, g, {**w, "W2": w["W2"][:, :, :3]}, a), "init_weights['W2']"),
    (lambda q, k, v, g, w, a: (q, k, v, g, w, None), "feature_coeffs"),
    (lambda q, k, v, g, w, a: (q, k, v[..., :3], g, w, a), "K == V"),
])
def test_bad_inputs_raise_clear_errors(change, message):
  args = change(*memory_inputs(ATLAS, length=6))
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    memory_op(*args[:5], config=ATLAS, feature_coeffs=args[5])


def test_inputs_a_config_would_ignore_are_refused():
  """θ for a memory without momentum, φ's coefficients for the identity map: an error, not silently unused."""
  q, k, v, gates, weights, coeffs = memory_inputs(ATLAS, length=6)
  with pytest.raises(ValueError, match="momentum=False would ignore it"):
    memory_op(q, k, v, gates, weights, config=dataclasses.replace(ATLAS, momentum=False, muon=False),
              feature_coeffs=coeffs)
  identity = dataclasses.replace(ATLAS, feature_map="identity")
  with pytest.raises(ValueError, match="feature_map='identity' has no coefficients"):
    memory_op(q, k, v, gates, memory_inputs(identity, length=6)[4], config=identity, feature_coeffs=coeffs)


def test_bad_options_raise_clear_errors():
  inputs = memory_inputs(ATLAS, length=6)
  with pytest.raises(ValueError, match="implementation='fast'"):
    memory_op(*inputs[:5], config=ATLAS, feature_coeffs=inputs[5], implementation="fast")
  with pytest.raises(ValueError, match="block_size=3 must divide chunk_size=8"):
    memory_op(*inputs[:5], config=ATLAS, feature_coeffs=inputs[5], block_size=3)
  with pytest.raises(ValueError, match="MemoryConfig.kind='deep'"):
    MemoryConfig(kind="deep")
  with pytest.raises(ValueError, match="MemoryConfig.window=0"):
    MemoryConfig(window=0)
  with pytest.raises(ValueError, match="degree 1..3"):
    MemoryConfig(feature_map="polynomial", degree=4)
  with pytest.raises(ValueError, match="max_grad_norm=0"):
    MemoryConfig(max_grad_norm=0)
  assert MemoryConfig(chunk_size=np.int64(8)).chunk_size == 8  # sweep values from NumPy are taken as ints
  with pytest.raises(ValueError, match="chunk_size=True"):
    MemoryConfig(chunk_size=True)


def test_a_state_of_another_call_is_named():
  """A streaming state made for another batch, window, memory kind or width fails with the field's name, not a
  broadcasting error inside the scan."""
  q, k, v, gates, weights, coeffs = memory_inputs(ATLAS, length=6)
  _, state = memory_op(q, k, v, gates, weights, config=ATLAS, feature_coeffs=coeffs)
  first = lambda x: None if x is None else x[:1]
  with pytest.raises(ValueError, match=r"state.weights\['W1'\] has shape \(2, 2, 4, 8\); this call needs \(1,"):
    memory_op(first(q), first(k), first(v), Gates(*map(first, gates)), weights, config=ATLAS,
              feature_coeffs=coeffs, state=state)
  with pytest.raises(ValueError, match="state.window_k has shape"):
    memory_op(q, k, v, gates, weights, config=dataclasses.replace(ATLAS, window=1), feature_coeffs=coeffs,
              state=state)
  linear = MemoryConfig(kind="linear", window=ATLAS.window, chunk_size=ATLAS.chunk_size, momentum=True)
  with pytest.raises(ValueError, match="a state of another memory config"):
    memory_op(q, k, v, gates, {"W": jnp.zeros((2, 4, 4))}, config=linear, state=state)
  with pytest.raises(ValueError, match=r"init_weights\['W2'\] has shape"):
    init_state(ATLAS, weights, 2, 99, 4)  # K = 99 does not match the weights


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_max_grad_norm_clips_only_large_gradients(implementation):
  """A bound above every token's gradient norm changes nothing; a small one changes the outputs."""
  config = MemoryConfig(kind="mlp", window=2, chunk_size=4, momentum=True)
  inputs = memory_inputs(config, length=13)
  run = lambda c: memory_op(*inputs[:5], config=c, implementation=implementation)[0]
  plain = run(config)
  np.testing.assert_allclose(run(dataclasses.replace(config, max_grad_norm=1e6)), plain, rtol=1e-6, atol=1e-6)
  assert float(jnp.max(jnp.abs(run(dataclasses.replace(config, max_grad_norm=1e-3)) - plain))) > 1e-3


def test_clip_scale_is_min_one_and_bound_over_norm():
  """Shared by every path, so checked against min(1, c / ‖g‖) itself: ‖g‖² = 16, 1, 0 with c = 2."""
  np.testing.assert_allclose(clip_scale(jnp.array([16.0, 1.0, 0.0]), 2.0), [0.5, 1.0, 1.0], rtol=1e-7)


def test_max_grad_norm_keeps_a_diverging_memory_finite():
  """An mlp memory with momentum and 3× memory_inputs' η overflows within 2,048 tokens; bounded gradients do not."""
  config = MemoryConfig(kind="mlp", chunk_size=64, momentum=True)
  q, k, v, gates, weights, _ = memory_inputs(config, batch=1, heads=2, length=2048, key_dim=16, value_dim=16,
                                             hidden=64, seed=1)
  gates = gates._replace(eta=3 * gates.eta)
  finite = lambda c: bool(jnp.all(jnp.isfinite(memory_op(q, k, v, gates, weights, config=c)[0])))
  assert not finite(config)
  assert finite(dataclasses.replace(config, max_grad_norm=1.0))


@pytest.mark.parametrize("implementation", ["xla", "reference"])
def test_a_device_mesh_runs_each_batch_and_heads_block_on_its_device(implementation):
  """Inside jax.set_mesh with logical rules the op runs per (batch, heads) block: outputs, state and gradients
  (also when continuing from a state) equal the unsharded call's, the outputs keep the block layout, and the
  compiled program moves no q, k or v between devices."""
  config = MemoryConfig(kind="mlp", chunk_size=8, window=2, momentum=True)
  q, k, v, gates, weights, _ = memory_inputs(config, batch=4, heads=2, length=21)
  first = lambda: memory_op(q[:, :8], k[:, :8], v[:, :8], jax.tree.map(lambda g: g[:, :8], gates), weights,
                            config=config, implementation=implementation)[1]

  def loss(q, k, v, gates, weights, state):
    y, state = memory_op(q, k, v, gates, weights, config=config, state=state, implementation=implementation)
    return jnp.sum(y * jnp.cos(y)) + jnp.sum(state.weights["W1"] ** 2), (y, state)

  run = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  tokens = P(("data", "fsdp"), None, "tensor")
  put = lambda tree, spec: jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec)), tree)
  for state in (None, first()):
    (_, (y, final)), grads = run(q, k, v, gates, weights, state)
    with jax.set_mesh(mesh), logical_rules(DEFAULT_RULES):
      args = put((q, k, v), tokens) + (put(gates, tokens), put(weights, P("tensor")), state)
      (_, (y_mesh, final_mesh)), grads_mesh = run(*args)
      hlo = run.lower(*args).compile().as_text()
    assert max_rel_error((y_mesh, compared_state(final_mesh)), (y, compared_state(final))) < 1e-5
    assert max_rel_error(grads_mesh, grads) < 1e-5
    assert y_mesh.sharding.spec == P(("data", "fsdp"), None, "tensor", None)
    assert "all-gather" not in hlo and "all-to-all" not in hlo
