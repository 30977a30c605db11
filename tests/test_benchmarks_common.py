"""Tests of the benchmarks' shared plumbing (benchmarks/common.py) and model-FLOP counts (benchmarks/flops.py)."""

import dataclasses
import sys

import pytest

from atlas_jax.memory import MemoryConfig
from atlas_jax.presets import get_preset
from benchmarks import common, flops


def test_results_go_where_the_environment_says(tmp_path, monkeypatch, capsys):
  target = tmp_path / "R.md"
  monkeypatch.setenv(common.RESULTS_ENV, str(target))
  assert common.results_path() == str(target)
  common.report("Smoke (benchmarks/smoke.py)", "| a |\n|---|\n| 1 |", write=True)
  common.report("Smoke (benchmarks/smoke.py)", "| a |\n|---|\n| 2 |", write=True)
  text = target.read_text(encoding="utf-8")
  assert text.startswith("# Benchmark results\n") and text.count("## Smoke (benchmarks/smoke.py)") == 2
  assert f"appended to {target}" in capsys.readouterr().out
  monkeypatch.delenv(common.RESULTS_ENV)
  assert common.results_path() == common.RESULTS


def test_header_versions_and_exact_command(monkeypatch):
  monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "benchmarks.decode", "--contexts=1024,2048"], raising=False)
  for name in common.COMMAND_ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
  monkeypatch.setenv("XLA_FLAGS", "--xla_a=1 --xla_b=2")
  assert common.command() == ("LD_PRELOAD=libtcmalloc_minimal.so.4 'XLA_FLAGS=--xla_a=1 --xla_b=2' "
                              "python -m benchmarks.decode --contexts=1024,2048")
  versions = common.versions()
  for name in ("python", "jax", "jaxlib", "flax", "numpy", "optax"):
    assert f"{name} " in versions
  header = "\n".join(common.header())
  assert "- command: `LD_PRELOAD=" in header and f"- versions: {versions}" in header


def _tiny(name, **memory):
  config = get_preset(name, "tiny", vocab_size=257, width=128, num_heads=4, mlp_hidden=384)
  return config.replace(memory=dataclasses.replace(config.memory, chunk_size=64, **memory)) if memory else config


def test_train_step_flops_transformer():
  config = _tiny("transformer++")
  # Per layer: q, k, v, out (4 · 128²) and SwiGLU (3 · 128 · 384); the untied head 128 · 257.
  weights = 2 * (4 * 128 * 128 + 3 * 128 * 384) + 128 * 257
  assert flops.dense_weights(config) == weights
  step = flops.train_step_flops(config, batch=2, length=8)
  assert step.dense == 6 * weights * 16
  # Causal: query t sees t + 1 keys, Σ = 36 over 8 positions; 2 products × 2 FLOPs × width × 3 (fwd + bwd) × 2 layers.
  assert step.attention == 2 * 2 * 128 * 36 * 2 * 3 * 2
  assert step.memory == 0 and step.total == step.dense + step.attention
  swa = flops.attention_flops(config.replace(blocks=("swa", "swa"), swa_window=4), "swa", batch=1, length=8)
  assert swa == 2 * 2 * 128 * (1 + 2 + 3 + 4 * 5)


def test_train_step_flops_memory_and_gaps():
  delta = _tiny("delta")
  step = flops.train_step_flops(delta, batch=2, length=128)
  per_layer = flops.memory_flops(delta.memory, batch=2, length=128, heads=delta.memory_heads,
                                 key_dim=delta.memory_head_dim, value_dim=delta.memory_head_dim)
  assert step.memory == 2 * 3 * per_layer and step.attention == 0 and step.total is not None
  assert flops.train_step_flops(_tiny("atlas"), batch=2, length=128).missing == "Muon"
  assert flops.train_step_flops(_tiny("atlas"), batch=2, length=128).total is None
  assert flops.train_step_flops(_tiny("atlas++", muon=False), batch=2, length=128).missing == "gated_mlp memory"
  assert flops.train_step_flops(_tiny("dot"), batch=2, length=128).missing == "kernel memory"
  assert flops.train_step_flops(_tiny("atlas", muon=False, granularity="token"), batch=2, length=128).total


def test_memory_flops_polynomial_widens_p():
  identity = MemoryConfig(kind="linear", chunk_size=4)
  poly = dataclasses.replace(identity, feature_map="polynomial", degree=2)
  shapes = dict(batch=1, length=8, heads=1, key_dim=2, value_dim=3)
  # P = 1 + 2 + 3 = 6 for K = 2, degree 2; with W = 1, l2, no momentum: 2NPV + 2CPV + 2CN(P + V) + 2NPV + 2C²N.
  c = n = 4
  expected = lambda p: (2 * n * p * 3 + 2 * c * p * 3 + 2 * c * n * (p + 3) + 2 * n * p * 3 + 2 * c * c * n) * 2
  assert flops.memory_flops(identity, **shapes) == expected(2)
  assert flops.memory_flops(poly, **shapes) == expected(6)
  with pytest.raises(ValueError, match="non-Muon"):
    flops.memory_flops(dataclasses.replace(identity, muon=True), **shapes)
