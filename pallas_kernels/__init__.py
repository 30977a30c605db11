"""Pallas kernels for the memory op (the Omega-rule chunk update).

No kernel is in this package yet: the Pallas issue adds ``omega_chunk/`` (forward and backward kernels behind
``jax.custom_vjp``) with the xla path of ``atlas_jax.memory`` as their reference. Until then
``memory_op(implementation="auto")`` resolves to ``xla`` everywhere.
"""
