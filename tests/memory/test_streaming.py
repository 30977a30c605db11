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


def test_block_size_does_not_change_the_result():
  config = MemoryConfig(kind="mlp", window=3, chunk_size=8, momentum=True, muon=True)
  with x64():
    inputs = memory_inputs(config, length=29, dtype=jnp.float64)
    full = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="xla")
    for block in (1, 2, 4):
      sub = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="xla", block_size=block)
      assert max_rel_error((sub[0], compared_state(sub[1])), (full[0], compared_state(full[1]))) < 1e-10
