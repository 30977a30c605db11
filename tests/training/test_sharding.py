"""Sharded execution on 8 fake CPU devices (tests/conftest.py sets them up)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from atlas_jax.model import AtlasLM
from atlas_jax.presets import get_preset
from atlas_jax.sharding import DEFAULT_RULES, logical_rules
from atlas_jax.training.aot import compile_train_step
from atlas_jax.training.mesh import make_mesh, mesh_shape, state_shardings
from atlas_jax.training.step import cross_entropy
from tests.helpers import max_rel_error

CONFIG = get_preset("atlas_mag", "tiny", width=32, num_heads=4, memory_heads=2, memory_head_dim=16, mlp_hidden=64)


def test_loss_and_gradients_on_8_devices_equal_one_device(capfd):
  """Also without XLA replicating activations it cannot reshard (it says so on stderr when compiling): the
  embedding rows had come out split along D by fsdp, not by batch."""
  assert jax.device_count() == 8
  graphdef, params = nnx.split(AtlasLM(CONFIG, rngs=nnx.Rngs(0)))
  batch = jax.random.randint(jax.random.PRNGKey(1), (8, 17), 0, 256)
  loss_and_grads = jax.value_and_grad(lambda p, b: cross_entropy(graphdef, p, b))
  single = jax.jit(loss_and_grads)(params, batch)
  mesh = make_mesh((2, 2, 2))
  sharded_params = jax.device_put(params, state_shardings(params, mesh, DEFAULT_RULES))
  sharded_batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
  with jax.set_mesh(mesh), logical_rules(DEFAULT_RULES):
    sharded = jax.jit(loss_and_grads)(sharded_params, sharded_batch)
  some_param = jax.tree_util.tree_leaves(sharded_params)[0]
  assert len(some_param.sharding.device_set) == 8
  np.testing.assert_allclose(float(sharded[0]), float(single[0]), rtol=1e-5)
  assert max_rel_error(sharded[1], single[1]) < 1e-5
  assert "Involuntary full rematerialization" not in capfd.readouterr().err


def test_mesh_shape_resolution_and_errors():
  assert mesh_shape((-1, 2, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="does not divide 8 devices"):
    mesh_shape((-1, 3, 1), 8)
  with pytest.raises(ValueError, match="at most one -1"):
    mesh_shape((-1, -1, 1), 8)
  with pytest.raises(ValueError, match="uses 4 devices; 8 are available"):
    mesh_shape((1, 2, 2), 8)


def test_rules_naming_an_axis_the_mesh_lacks_are_an_error():
  """A user's own mesh with DEFAULT_RULES (data, fsdp, tensor): named, not a KeyError inside the memory op."""
  model = AtlasLM(CONFIG, rngs=nnx.Rngs(0))
  logits = nnx.jit(lambda model, tokens: model(tokens)[0])
  tokens = jax.numpy.zeros((8, 5), jax.numpy.int32)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(mesh), logical_rules(DEFAULT_RULES):
    with pytest.raises(ValueError, match=r"map '\w+' to mesh axes \[.*\], but the mesh has axes \['data'\]"):
      logits(model, tokens)
  with jax.set_mesh(mesh), logical_rules((("batch", "data"),)):
    assert logits(model, tokens).shape == (8, 5, CONFIG.vocab_size)  # rules that name only its axes


def test_parameter_shardings_refuse_rules_with_a_typo():
  """A misspelt logical axis had left its dimension replicated, a misspelt mesh axis had been a KeyError."""
  params = nnx.state(AtlasLM(CONFIG, rngs=nnx.Rngs(0)))
  mesh = make_mesh((2, 2, 2))
  with pytest.raises(ValueError, match=r"rule \('embedd', 'fsdp'\) names no logical axis of this model"):
    state_shardings(params, mesh, DEFAULT_RULES + (("embedd", "fsdp"),))
  with pytest.raises(ValueError, match=r"rule \('mlp', 'model'\) names mesh axes \['model'\]"):
    state_shardings(params, mesh, (("mlp", "model"),))


def test_ahead_of_time_compile_on_a_fake_mesh():
  compiled = compile_train_step(get_preset("atlas", "tiny", scan_layers=True, vocab_size=256), make_mesh((2, 2, 2)),
                                DEFAULT_RULES, batch_size=8, seq_len=32, grad_accum=2)
  assert compiled.memory_analysis() is not None


@pytest.mark.slow
def test_ahead_of_time_compile_of_a_paper_size_model():
  compile_train_step(get_preset("atlas", "170m"), make_mesh((1, 2, 4)), DEFAULT_RULES, batch_size=8, seq_len=512)


def test_gradient_accumulation_equals_one_large_batch():
  import optax

  from atlas_jax.training.step import make_train_step

  graphdef, params = nnx.split(AtlasLM(CONFIG, rngs=nnx.Rngs(0)))
  tx = optax.sgd(1.0)  # the update is the gradient itself (Adam would amplify rounding of tiny gradients)
  batch = jax.random.randint(jax.random.PRNGKey(2), (16, 17), 0, 256)
  one = jax.jit(make_train_step(graphdef, tx, 1))(params, tx.init(params), batch)
  two = jax.jit(make_train_step(graphdef, tx, 2))(params, tx.init(params), batch)
  # On a mesh each device keeps its rows in every micro-batch: no token ids (s32) move between devices.
  mesh = make_mesh((2, 2, 2))
  with jax.set_mesh(mesh), logical_rules(DEFAULT_RULES):
    step = jax.jit(make_train_step(graphdef, tx, 2))
    args = (jax.device_put(params, state_shardings(params, mesh, DEFAULT_RULES)), tx.init(params),
            jax.device_put(batch, NamedSharding(mesh, PartitionSpec(("data", "fsdp")))))
    on_mesh = step(*args)
    hlo = step.lower(*args).compile().as_text()
  moved = [line for line in hlo.splitlines() if "= s32[" in line
           and any(op in line for op in ("all-gather(", "all-to-all(", "collective-permute("))]
  assert not moved, moved[:3]
  for got in (two, on_mesh):
    np.testing.assert_allclose(float(got[2]["loss"]), float(one[2]["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(got[0]), jax.tree_util.tree_leaves(one[0])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_tensor_axis_gives_each_device_whole_heads(caplog):
  """On a tensor axis of 2 the memory layers' channels split by whole heads (head-major q, k, v and gates), so a
  train step's forward and backward move no activations between devices other than the sums of the row-split
  projections (all-reduce); a byte vocabulary of 257, which the axis does not divide, is replicated with a
  warning instead of failing. Loss and gradients equal one device's."""
  config = get_preset("titans", "tiny", vocab_size=257, width=32, memory_heads=2, memory_head_dim=16,
                      mlp_hidden=64)
  graphdef, params = nnx.split(AtlasLM(config, rngs=nnx.Rngs(0)))
  batch = jax.random.randint(jax.random.PRNGKey(1), (2, 17), 0, 257)
  loss_and_grads = jax.jit(jax.value_and_grad(lambda p, b: cross_entropy(graphdef, p, b)))
  single = loss_and_grads(params, batch)
  mesh = make_mesh((1, 1, 2), devices=jax.devices()[:2])
  with caplog.at_level("WARNING"):
    shardings = state_shardings(params, mesh, DEFAULT_RULES)
  assert "257 is not divisible by mesh axes ('tensor',)" in caplog.text
  sharded = jax.device_put(params, shardings)
  qkv = [x for path, x in jax.tree_util.tree_leaves_with_path(sharded) if "qkv" in jax.tree_util.keystr(path)][0]
  assert qkv.sharding.spec[1] == "tensor"  # output channels
  with jax.set_mesh(mesh), logical_rules(DEFAULT_RULES):
    got = loss_and_grads(sharded, batch)
    hlo = loss_and_grads.lower(sharded, batch).compile().as_text()
  assert max_rel_error(got, single) < 1e-5
  assert "all-gather" not in hlo and "all-to-all" not in hlo
