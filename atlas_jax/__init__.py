"""atlas-jax: ATLAS (Behrouz et al., arXiv 2505.23735) and its model family in JAX/Flax."""

from atlas_jax.memory import Gates, MemoryConfig, MemoryState, init_state, memory_op

__version__ = "0.1.0"
__all__ = ["Gates", "MemoryConfig", "MemoryState", "init_state", "memory_op"]
