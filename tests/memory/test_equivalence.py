"""xla equals reference (SPEC.md §5): outputs, final state and gradients on a sampled grid of configurations."""

from __future__ import annotations

import itertools
import random

import jax
import jax.numpy as jnp
import pytest

from atlas_jax.memory import MemoryConfig, memory_op
from atlas_jax.memory import chunked as chunked_module
from atlas_jax.memory import coefficients as coefficients_module
from tests.helpers import compared_state, max_rel_error, memory_inputs, x64

# float64 comparisons of two exact formulas; the only error is rounding.
TOL_F64 = 1e-9
TOL_F32 = 2e-4  # outputs, state and gradients (measured: ~1e-5 on the gradients of the float32 test)


def _grid(n: int, seed: int = 0) -> list[MemoryConfig]:
  """n configurations sampled from kind × φ × bias × W × C × momentum × Muon × granularity."""
  axes = itertools.product(
      ("linear", "mlp", "gated_mlp"), ("identity", "polynomial"), ("l2", "dot"), (1, 3, 8), (1, 4, 16),
      (False, True), (False, True), ("token", "chunk"))
  combos = [c for c in axes if not (c[7] == "chunk" and c[4] == 1)]  # chunk granularity needs C > 1 to differ
  picked = random.Random(seed).sample(combos, n)
  return [
      MemoryConfig(kind=kind, feature_map=fmap, degree=2, bias=bias, window=w, chunk_size=c, momentum=mom,
                   muon=muon, granularity=gran)
      for kind, fmap, bias, w, c, mom, muon, gran in picked
  ]


# Hand-picked corners on top of the sample: every kind with the full ATLAS optimiser, degree 3 without the
# constant block, residual off, W > C, and T = 23 (a multiple of no C > 1).
CORNERS = [
    MemoryConfig(kind="mlp", feature_map="polynomial", window=3, chunk_size=4, momentum=True, muon=True),
    MemoryConfig(kind="gated_mlp", feature_map="polynomial", window=8, chunk_size=4, momentum=True, muon=True),
    MemoryConfig(kind="linear", feature_map="polynomial", degree=3, drop_constant=True, window=3, chunk_size=16,
                 momentum=True),
    MemoryConfig(kind="mlp", residual=False, bias="dot", window=8, chunk_size=1),
    MemoryConfig(kind="linear", residual=True, window=1, chunk_size=4, momentum=True, muon=True,
                 granularity="chunk"),
    # max_grad_norm = 0.5 clips some tokens' gradients of these inputs and leaves others (both branches).
    MemoryConfig(kind="mlp", window=3, chunk_size=4, momentum=True, max_grad_norm=0.5),
    MemoryConfig(kind="gated_mlp", feature_map="polynomial", window=2, chunk_size=4, momentum=True, muon=True,
                 granularity="chunk", max_grad_norm=0.5),
    MemoryConfig(kind="linear", bias="dot", window=8, chunk_size=16, max_grad_norm=0.5),
]
CONFIGS = _grid(14) + CORNERS


def _loss_fn(config, implementation, weights_out):
  """A scalar touching every output and the final Φ, S and anchor, so gradients see all of them."""

  def loss(q, k, v, gates, init_weights, coeffs):
    y, state = memory_op(q, k, v, gates, init_weights, config=config, feature_coeffs=coeffs,
                         implementation=implementation)
    total = jnp.sum(y * jnp.sin(jnp.arange(y.size).reshape(y.shape)))
    for name in state.weights:
      total += jnp.sum(state.weights[name] * weights_out) + 0.5 * jnp.sum(state.momentum[name] * weights_out)
      total += 0.3 * jnp.sum(state.anchor[name] * weights_out)
    return total

  return loss


def _id(c: MemoryConfig) -> str:
  parts = [c.kind, c.feature_map[:4], c.bias, f"W{c.window}", f"C{c.chunk_size}", "mom" if c.momentum else "",
           "muon" if c.muon else "", c.granularity if c.granularity != "token" else "",
           f"clip{c.max_grad_norm}" if c.max_grad_norm else ""]
  return "-".join(p for p in parts if p)


@pytest.mark.parametrize("seed, config", list(enumerate(CONFIGS)), ids=[_id(c) for c in CONFIGS])
def test_xla_equals_reference(seed, config):
  """Each configuration on its own random inputs (seed = its index)."""
  with x64():
    length = 23 if config.chunk_size != 16 else 37
    inputs = memory_inputs(config, length=length, dtype=jnp.float64, seed=seed)
    outs = {}
    grads = {}
    for impl in ("reference", "xla"):
      y, state = jax.jit(lambda *a, impl=impl: memory_op(*a[:5], config=config, feature_coeffs=a[5],
                                                         implementation=impl))(*inputs)
      outs[impl] = (y, compared_state(state))
      argnums = (0, 1, 2, 3, 4, 5) if inputs[5] is not None else (0, 1, 2, 3, 4)
      grads[impl] = jax.jit(jax.grad(_loss_fn(config, impl, 0.7), argnums=argnums))(*inputs)
    assert max_rel_error(outs["xla"], outs["reference"]) < TOL_F64
    assert max_rel_error(grads["xla"], grads["reference"]) < TOL_F64


@pytest.mark.parametrize("config, seed", [(CORNERS[0], 3), (CORNERS[1], 4)], ids=("mlp-muon", "gated-muon"))
def test_xla_equals_reference_float32(config, seed):
  """float32 end to end: outputs, state and gradients."""
  inputs = memory_inputs(config, length=40, seed=seed)
  y_ref, s_ref = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="reference")
  y_xla, s_xla = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="xla")
  assert y_xla.dtype == jnp.float32
  assert max_rel_error((y_xla, compared_state(s_xla)), (y_ref, compared_state(s_ref))) < TOL_F32
  grads = {impl: jax.jit(jax.grad(_loss_fn(config, impl, 0.7), argnums=(0, 1, 2, 3, 4, 5)))(*inputs)
           for impl in ("reference", "xla")}
  assert max_rel_error(grads["xla"], grads["reference"]) < TOL_F32


def _mismatch(config) -> float:
  with x64():
    inputs = memory_inputs(config, length=23, dtype=jnp.float64, seed=1)
    ref = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="reference")
    xla = memory_op(*inputs[:5], config=config, feature_coeffs=inputs[5], implementation="xla")
    return max_rel_error((xla[0], compared_state(xla[1])), (ref[0], compared_state(ref[1])))


MUTANT_CONFIG = MemoryConfig(kind="mlp", window=3, chunk_size=4, momentum=True)


def test_suite_catches_a_wrong_window_band(monkeypatch):
  """A one-character change in the chunked formulas (band one slot too wide) must fail the comparison."""
  assert _mismatch(MUTANT_CONFIG) < TOL_F64
  original = coefficients_module.window_band
  monkeypatch.setattr(coefficients_module, "window_band", lambda r, w, valid: original(r, w + 1, valid)[:, 1:])
  assert _mismatch(MUTANT_CONFIG) > 1e-3


def test_suite_catches_a_dropped_momentum_term(monkeypatch):
  """Dropping the carried momentum's contribution μ_t S_in to the reads must fail the comparison."""
  original = chunked_module.coefficients

  def without_mu(*args):
    co = original(*args)
    return co._replace(mu=jnp.zeros_like(co.mu))

  monkeypatch.setattr(chunked_module, "coefficients", without_mu)
  assert _mismatch(MUTANT_CONFIG) > 1e-3
