"""The streaming contract (SPEC.md §5): any split of a sequence gives the same outputs and final state."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atlas_jax.memory import Gates, MemoryConfig, memory_op
from tests.helpers import compared_state, max_rel_error, memory_inputs, x64

CONFIGS = [
    MemoryConfig(kind="mlp", feature_map="polynomial", window=3, chunk_size=4, momentum=True, muon=True),
    MemoryConfig(kind="gated_mlp", window=8, chunk_size=5, momentum=True),
    MemoryConfig(kind="linear", bias="dot", window=2, chunk_size=8, granularity="chunk", momentum=True, muon=True),
]
SPLITS = {
    "uneven": [1, 2, 3, 10, 10, 11, 17],  # includes an empty piece (10 → 10)
    "tokens": list(range(1, 23)),
    "two": [9],
}


def _run_pieces(config, implementation, inputs, cuts):
  q, k, v, gates, weights, coeffs = inputs
  step = jax.jit(functools.partial(memory_op, config=config, implementation=implementation))
  state, outputs, begin = None, [], 0
  for end in cuts + [q.shape[1]]:
    piece = lambda x: None if x is None else x[:, begin:end]
    args = (piece(q), piece(k), piece(v), Gates(*(piece(g) for g in gates)), weights)
    y, state = step(*args, feature_coeffs=coeffs, state=state)
    outputs.append(y)
    begin = end
  return jnp.concatenate(outputs, axis=1), state


@pytest.mark.parametrize("config", CONFIGS, ids=("atlas", "gated", "linear-chunk"))
@pytest.mark.parametrize("implementation", ["reference", "xla"])
@pytest.mark.parametrize("split", SPLITS, ids=list(SPLITS))
def test_splits_match_one_call(config, implementation, split):
  with x64():
    inputs = memory_inputs(config, length=23, dtype=jnp.float64, seed=7)
    y_one, s_one = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="reference")
    y_split, s_split = _run_pieces(config, implementation, inputs, SPLITS[split])
    assert int(s_split.position) == 23
    assert max_rel_error((y_split, compared_state(s_split)), (y_one, compared_state(s_one))) < 1e-9
    # The state's window buffer is usable by either implementation: hand it over mid-sequence.
    np.testing.assert_allclose(np.asarray(s_split.window_gamma), np.asarray(s_one.window_gamma), atol=1e-12)


def test_block_size_and_head_groups_do_not_change_the_result():
  config = MemoryConfig(kind="mlp", window=3, chunk_size=8, momentum=True, muon=True)
  with x64():
    inputs = memory_inputs(config, length=29, dtype=jnp.float64)
    full = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="xla")
    for block in (1, 2, 4):
      sub = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="xla", block_size=block)
      assert max_rel_error((sub[0], compared_state(sub[1])), (full[0], compared_state(full[1]))) < 1e-10
    # Independent scans over groups of heads: the same per-head results.
    assert inputs[0].shape[2] == 2
    grouped = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="xla", head_groups=2)
    assert max_rel_error((grouped[0], compared_state(grouped[1])), (full[0], compared_state(full[1]))) < 1e-10


@pytest.mark.parametrize("config", [
    MemoryConfig(kind="mlp", feature_map="polynomial", window=5, chunk_size=4, momentum=True, muon=True),
    MemoryConfig(kind="gated_mlp", window=3, chunk_size=4, momentum=True, granularity="chunk", max_grad_norm=0.5),
    MemoryConfig(kind="linear", window=6, chunk_size=4, momentum=True),
], ids=("atlas", "gated-chunk-clipped", "linear-window"))
def test_gradients_from_a_mid_chunk_state_match_the_reference(config):
  """Continuing from a state at position 6 (C = 4: mid-chunk, a window carried): the xla path's gradients with
  respect to the inputs, φ's coefficients and every field of the incoming state equal the reference's."""
  with x64():
    q, k, v, gates, weights, coeffs = memory_inputs(config, length=19, dtype=jnp.float64, seed=11)
    part = lambda x, a, b: None if x is None else x[:, a:b]
    head = lambda x: part(x, 0, 6)
    _, state = memory_op(head(q), head(k), head(v), Gates(*(head(g) for g in gates)), weights, config=config,
                         feature_coeffs=coeffs, implementation="reference")

    def loss(q, k, v, gates, coeffs, state, implementation):
      y, out = memory_op(q, k, v, gates, weights, config=config, feature_coeffs=coeffs, state=state,
                         implementation=implementation)
      ripple = jnp.sin(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))
      return jnp.sum(y * ripple) + sum(jnp.sum(x ** 2) for x in (*out.weights.values(), *out.momentum.values()))

    tail = lambda x: part(x, 6, 19)
    args = (tail(q), tail(k), tail(v), Gates(*(tail(g) for g in gates)), coeffs, state)
    grads = {impl: jax.jit(jax.grad(functools.partial(loss, implementation=impl), argnums=(0, 1, 2, 3, 4, 5),
                                    allow_int=True))(*args) for impl in ("reference", "xla")}
    fields = lambda s: (s.weights, s.anchor, s.momentum, s.window_k, s.window_v, s.window_gamma, s.decay)
    assert max_rel_error(grads["xla"][:5], grads["reference"][:5]) < 1e-9
    assert max_rel_error(fields(grads["xla"][5]), fields(grads["reference"][5])) < 1e-9
