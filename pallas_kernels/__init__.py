"""Pallas kernels for the memory op (the Omega-rule chunk update).

``omega_chunk/`` holds forward and backward kernels for the linear, mlp and gated_mlp memories (Muon off) behind
``jax.custom_vjp``, with the xla path of ``atlas_jax.memory`` as their reference. Model code never imports
them: ``memory_op(implementation="pallas")`` runs them, and ``"auto"`` does for linear memories on one GPU (on
an H200 they ran ahead of xla, BENCHMARKS.md; ``explain_implementation`` says which path a call takes and why).
On CPU they run in the Pallas interpreter (tests); on TPU the xla path is used.
"""
