"""Logical axis names → mesh axes, and the one helper that constrains activations at block boundaries.

Parameters carry logical axis names (``nnx.with_partitioning``); the experiment config supplies rules such as
``(("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"))``. Model code never names a mesh axis.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
from jax.sharding import PartitionSpec

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Logical axis → mesh axes (data, fsdp, tensor): the defaults of the experiment configs.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("layers", None),
    ("length", None),
)

_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("atlas_logical_rules", default=None)


@contextlib.contextmanager
def logical_rules(rules: Rules):
  """Use `rules` for `constrain` and `logical_to_spec` inside the block."""
  token = _RULES.set(tuple(rules))
  try:
    yield
  finally:
    _RULES.reset(token)


def current_rules() -> Rules | None:
  return _RULES.get()


def axis_names(entry) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (a name, a tuple of names or None)."""
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def spec_entry(names: tuple[str, ...]):
  """The PartitionSpec entry for mesh axes `names`: one name, a tuple, or None."""
  return names[0] if len(names) == 1 else (names or None)


def num_shards(entry, mesh_shape) -> int:
  """How many pieces the mesh axes of `entry` cut a dimension into (`mesh_shape`: {axis: size})."""
  return math.prod(mesh_shape[name] for name in axis_names(entry))


def divisible_spec(spec: PartitionSpec, shape, mesh_shape) -> PartitionSpec:
  """`spec` with each dimension that its mesh axes do not divide left unsplit (`mesh_shape`: {axis: size})."""
  entries = tuple(spec) + (None,) * (len(shape) - len(spec))
  return PartitionSpec(*(entry if size % num_shards(entry, mesh_shape) == 0 else None
                         for size, entry in zip(shape, entries)))


def check_rules(rules: Rules, mesh_axes, logical_names) -> None:
  """Refuse a rule for a logical axis that nothing in the model carries, or one that names a mesh axis the mesh
  lacks: both are most often typos, which would leave the intended dimension replicated or fail deep inside."""
  for name, target in rules:
    if name not in logical_names:
      raise ValueError(f"the logical axis rule ({name!r}, {target!r}) names no logical axis of this model; its "
                       f"axes are {sorted(logical_names)}.")
    missing = [axis for axis in axis_names(target) if axis not in mesh_axes]
    if missing:
      raise ValueError(f"the logical axis rule ({name!r}, {target!r}) names mesh axes {missing}, but the mesh has "
                       f"axes {list(mesh_axes)}.")


def logical_to_spec(axes: tuple[str | None, ...], rules: Rules | None = None) -> PartitionSpec:
  """PartitionSpec for logical `axes` under `rules` (unknown names and None are replicated).

  Inside a mesh context, a rule that names an axis the mesh lacks is an error (not silently replicated: it is
  most often a typo, or DEFAULT_RULES, which name data, fsdp and tensor, used with a mesh of other axes).
  """
  table = dict(rules if rules is not None else (_RULES.get() or ()))
  mesh_axes = jax.sharding.get_abstract_mesh().axis_names
  used: set[str] = set()
  spec = []
  for name in axes:
    target = table.get(name) if name is not None else None
    missing = [n for n in axis_names(target) if mesh_axes and n not in mesh_axes]
    if missing:
      raise ValueError(f"the logical axis rules map {name!r} to mesh axes {list(axis_names(target))}, but the "
                       f"mesh has axes {list(mesh_axes)}: give logical_rules(...) rules that name only this "
                       "mesh's axes.")
    names = tuple(n for n in axis_names(target) if n not in used)  # a mesh axis may shard only one dimension
    used.update(names)
    spec.append(spec_entry(names))
  return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: tuple[str | None, ...], *, divisible_only: bool = False) -> jax.Array:
  """Constrain an activation's sharding by logical axes; a no-op outside a mesh or without rules.

  divisible_only: leave a dimension unsplit where its mesh axes do not divide it, as the parameters' shardings
  do (``training.mesh.state_shardings``), so a constraint on a parameter matches its own sharding.
  """
  rules = _RULES.get()
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty:
    return x
  spec = logical_to_spec(axes, rules)
  if divisible_only:
    spec = divisible_spec(spec, x.shape, dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, spec)
