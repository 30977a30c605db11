"""Device mesh and shardings from the experiment config (axes data, fsdp, tensor; -1 means "the rest")."""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from flax import nnx

from atlas_jax.sharding import DEFAULT_RULES, Rules, axis_names, check_rules, divisible_spec, logical_to_spec

_log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
  """Resolve one −1 entry to the remaining devices; the product must equal the device count."""
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries for axes {MESH_AXES}.")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)} may contain at most one -1.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh shape {tuple(shape)} does not divide {num_devices} devices.")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh shape {tuple(shape)} uses {math.prod(shape)} devices; {num_devices} are available.")
  return tuple(shape)


def make_mesh(shape, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  resolved = mesh_shape(shape, len(devices))
  return Mesh(np.asarray(devices).reshape(resolved), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def state_shardings(abstract_state, mesh: Mesh, rules: Rules):
  """NamedShardings for an nnx.State whose Params carry logical axis names.

  A dimension that its mesh axes do not divide (a byte vocabulary of 257 over a tensor axis of 2) is not split
  along those axes, with a warning naming the parameter's shape. Rules with a typo are refused (``check_rules``).
  """
  is_spec = lambda x: isinstance(x, PartitionSpec) or x is None
  specs = nnx.get_partition_spec(abstract_state)
  shapes = [x.shape for x in jax.tree_util.tree_leaves(abstract_state)]
  leaves, treedef = jax.tree_util.tree_flatten(specs, is_leaf=is_spec)
  param_axes = {name for spec in leaves if spec is not None for entry in spec for name in axis_names(entry)}
  # Known names: the parameters' and the default rules' (activations' axes, and layers for scanned models).
  check_rules(rules, mesh.axis_names, param_axes | {name for name, _ in DEFAULT_RULES})
  shardings = []
  for spec, shape in zip(leaves, shapes, strict=True):
    resolved = logical_to_spec(tuple(spec), rules) if spec is not None else PartitionSpec()
    shardings.append(NamedSharding(mesh, _divisible(resolved, shape, mesh, spec)))
  return jax.tree_util.tree_unflatten(treedef, shardings)


def _divisible(spec: PartitionSpec, shape, mesh: Mesh, logical) -> PartitionSpec:
  kept = divisible_spec(spec, shape, mesh.shape)
  for size, entry, kept_entry in zip(shape, tuple(spec) + (None,) * len(shape), kept):
    if entry is not None and kept_entry is None:
      _log.warning("a parameter of shape %s with logical axes %s: %d is not divisible by mesh axes %s, so that "
                   "dimension is replicated", shape, tuple(logical), size, axis_names(entry))
  return kept


def like_params(tree, params_structure, param_shardings, replicated):
  """Shardings for an optimiser state: sub-trees shaped like the params get the params' shardings, the rest
  (step counts) is replicated. An optimiser whose moments are not params-shaped sub-trees (``optax.masked``
  keeps masked-out leaves as placeholders) would have them replicated: that is logged with their size."""
  fallback = []

  def visit(node):
    if jax.tree_util.tree_structure(node) == params_structure:
      return param_shardings
    fallback.extend(leaf for leaf in jax.tree_util.tree_leaves(node) if np.size(leaf) > 1)
    return jax.tree_util.tree_map(lambda _: replicated, node)

  out = jax.tree_util.tree_map(visit, tree, is_leaf=lambda n: jax.tree_util.tree_structure(n) == params_structure)
  if fallback:
    size = sum(np.size(leaf) * np.dtype(leaf.dtype).itemsize for leaf in fallback)
    _log.warning("%d optimiser-state arrays (%.1f MiB) are not shaped like the parameters and are replicated on "
                 "every device", len(fallback), size / 2**20)
  return out


def with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings`: a target for jit lowering or an Orbax restore."""
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
