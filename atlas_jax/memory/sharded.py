"""The memory op on a device mesh: each device runs its own (batch, heads) block inside ``jax.shard_map``.

The memory is independent across sequences and heads, so a block needs no communication. Left to XLA's SPMD
partitioner, a sharded ``jit`` could not split a ``pallas_call`` at all (it gathers q, k, v onto every device), and
the chunk scan's layout of the heads is its own guess. Here the block layout comes from the logical rules of
``atlas_jax.sharding`` (``batch``, ``heads``) and the mesh of ``jax.set_mesh``, as the training loop sets them.
Splitting the heads over a tensor axis is also how the memory uses several CPU cores: XLA:CPU runs one chunk
scan's small products on one core, while the devices of ``jax_num_cpu_devices`` run side by side
(BENCHMARKS.md).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
from jax.sharding import PartitionSpec

from atlas_jax.memory.state import Gates, MemoryState
from atlas_jax.sharding import axis_names, current_rules, logical_to_spec, num_shards, spec_entry

_map = jax.tree_util.tree_map


def mesh_context_size() -> int:
  """Devices of the ``jax.set_mesh`` context when logical rules are active too (where the op splits), else 0."""
  mesh = jax.sharding.get_abstract_mesh()
  return 0 if mesh.empty or current_rules() is None else mesh.size


def _splits(size: int, entry) -> bool:
  """Whether the context mesh's axes of a PartitionSpec `entry` divide `size` evenly."""
  return size % num_shards(entry, jax.sharding.get_abstract_mesh().shape) == 0


def _explicit_part(spec: PartitionSpec, explicit: set[str]) -> PartitionSpec:
  return PartitionSpec(*(spec_entry(tuple(n for n in axis_names(e) if n in explicit)) for e in spec))


def _laid_out(args, specs):
  """`args` resharded to `specs` over the mesh's Explicit axes, which shard_map needs its inputs to match already
  (over Auto axes shard_map moves the data itself)."""
  explicit = set(jax.sharding.get_abstract_mesh().explicit_axes)
  if not explicit:
    return args
  place = lambda spec, x: jax.sharding.reshard(x, _explicit_part(spec, explicit))
  return jax.tree.map(lambda spec, sub: _map(functools.partial(place, spec), sub), specs, args,
                      is_leaf=lambda s: isinstance(s, PartitionSpec))


def per_block(local: Callable, q, k, v, gates: Gates, init_weights, feature_coeffs, state: MemoryState | None):
  """``local(q, k, v, gates, init_weights, feature_coeffs, state) → (y, state)`` per (batch, heads) block.

  Outside a mesh context (``mesh_context_size() <= 1``) this is ``local`` itself. Where the mesh axes of
  ``batch`` (``heads``) do not divide B (H), that axis is not split: every device then runs all of it, which is
  correct but not faster.
  """
  if mesh_context_size() <= 1:
    return local(q, k, v, gates, init_weights, feature_coeffs, state)
  batch, heads = logical_to_spec(("batch", "heads"))
  batch = batch if _splits(q.shape[0], batch) else None
  heads = heads if _splits(q.shape[2], heads) else None
  tokens = PartitionSpec(batch, None, heads, None)  # q, k, v [B, T, H, ·]
  per_head = lambda x: PartitionSpec(heads, *(None,) * (x.ndim - 1))  # Φ_init [H, m, n], φ coefficients [H, p+1]
  # The state's arrays lead with (B, H); its position is a scalar, the same on every device.
  state_spec = lambda tree: _map(lambda x: PartitionSpec(batch, heads) if x.ndim else PartitionSpec(), tree)
  in_specs = (tokens, tokens, tokens, _map(lambda _: PartitionSpec(batch, None, heads), gates),
              _map(per_head, init_weights), None if feature_coeffs is None else per_head(feature_coeffs),
              None if state is None else state_spec(state))
  shapes = _map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                (q, k, v, gates, init_weights, feature_coeffs, state))
  _, state_out = jax.eval_shape(local, *shapes)
  # check_vma=False: pallas_call has no varying-axes rule; every input is mapped or replicated as specified.
  args = _laid_out((q, k, v, gates, init_weights, feature_coeffs, state), in_specs)
  return jax.shard_map(local, in_specs=in_specs, out_specs=(tokens, state_spec(state_out)), check_vma=False)(*args)
