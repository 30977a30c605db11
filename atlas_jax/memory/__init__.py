"""The ATLAS memory: a small network whose fast weights are trained inside the forward pass (SPEC.md §1–§5)."""

from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.fast_weights import newton_schulz, weight_shapes
from atlas_jax.memory.feature_maps import feature_dim, feature_map
from atlas_jax.memory.op import explain_implementation, memory_op, resolve_implementation
from atlas_jax.memory.state import Gates, MemoryState, init_state

__all__ = [
    "Gates", "MemoryConfig", "MemoryState", "feature_dim", "feature_map", "init_state", "memory_op",
    "newton_schulz", "resolve_implementation", "explain_implementation", "weight_shapes",
]
