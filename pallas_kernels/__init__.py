"""Pallas kernels for the memory op (the Omega-rule chunk update).

``omega_chunk/`` holds forward and backward kernels for the linear, mlp and gated_mlp memories (Muon off) behind
``jax.custom_vjp``, with the xla path of ``atlas_jax.memory`` as their reference. Model code never imports
them: ``memory_op(implementation="pallas")`` runs them, and ``"auto"`` does for linear memories on GPUs, on one
device or on several inside ``jax.set_mesh`` with ``atlas_jax.sharding.logical_rules`` (each device then runs its
own (batch, heads) block, ``atlas_jax/memory/sharded.py``). On an H200 they ran ahead of xla (BENCHMARKS.md);
``explain_implementation`` says which path a call takes and why. On CPU they run in the Pallas interpreter
(tests). There is no TPU variant: on TPU ``auto`` takes the xla path and ``implementation="pallas"`` raises
NotImplementedError.
"""
