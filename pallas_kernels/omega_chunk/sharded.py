"""The kernels on a device mesh: ``pallas_memory`` inside ``jax.shard_map``, one (batch, heads) block per device.

XLA's SPMD partitioner does not split a ``pallas_call``: under a sharded ``jit`` it would gather q, k, v onto every
device and run the whole batch there. The memory is independent across sequences and heads, so each device can
run the kernels on its own block with no communication. The block layout comes from the logical rules of
``atlas_jax.sharding`` (``batch``, ``heads``) and the mesh of ``jax.set_mesh``; outside a mesh this is
``pallas_memory`` itself.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec

from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.state import Gates
from atlas_jax.sharding import current_rules, logical_to_spec
from pallas_kernels.omega_chunk.ops import pallas_memory

_map = jax.tree_util.tree_map


def mesh_context_size() -> int:
  """Devices of the ``jax.set_mesh`` context when logical rules are active too (where the kernels split), else 0."""
  mesh = jax.sharding.get_abstract_mesh()
  return 0 if mesh.empty or current_rules() is None else mesh.size


def _splits(size: int, axes) -> bool:
  """Whether the mesh axes `axes` (a name, a tuple of names or None) divide `size` evenly."""
  shape = jax.sharding.get_abstract_mesh().shape
  names = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return size % math.prod(shape[name] for name in names) == 0


def sharded_pallas_memory(q, k, v, gates: Gates, init_weights, config: MemoryConfig, feature_coeffs, **kwargs):
  """``pallas_memory`` per (batch, heads) block of the context mesh (arguments and results as ``pallas_memory``)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return pallas_memory(q, k, v, gates, init_weights, config, feature_coeffs, **kwargs)
  # Without logical rules, or where the mesh axes do not divide B (H), that axis is not split: every device then
  # runs the whole of it (shard_map gathers the inputs), which is correct but not faster.
  batch, heads = logical_to_spec(("batch", "heads")) if current_rules() is not None else (None, None)
  batch = batch if _splits(q.shape[0], batch) else None
  heads = heads if _splits(q.shape[2], heads) else None
  tokens = PartitionSpec(batch, None, heads, None)  # q, k, v [B, T, H, ·]
  per_head = lambda x: PartitionSpec(heads, *(None,) * (x.ndim - 1))  # Φ_init [H, m, n], φ coefficients [H, p+1]
  in_specs = (tokens, tokens, tokens, _map(lambda _: PartitionSpec(batch, None, heads), gates),
              _map(per_head, init_weights), None if feature_coeffs is None else per_head(feature_coeffs))
  local = lambda q, k, v, gates, weights, coeffs: pallas_memory(q, k, v, gates, weights, config, coeffs, **kwargs)
  # The state's arrays lead with (B, H); its position is a scalar, the same on every device.
  shapes = _map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (q, k, v, gates, init_weights, feature_coeffs))
  _, state = jax.eval_shape(local, *shapes)
  state_specs = _map(lambda x: PartitionSpec(batch, heads) if x.ndim else PartitionSpec(), state)
  return jax.shard_map(local, in_specs=in_specs, out_specs=(tokens, state_specs), check_vma=False)(
      q, k, v, gates, init_weights, feature_coeffs)
