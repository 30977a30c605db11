"""Pallas kernels for the memory op (the Omega-rule chunk update).

``omega_chunk/`` holds forward and backward kernels for the linear, mlp and gated_mlp memories (Muon off) behind
``jax.custom_vjp``, with the xla path of ``atlas_jax.memory`` as their reference. Model code never imports them: ``memory_op(implementation=
"pallas")`` runs them (``"auto"`` stays on xla: on an H200 they ran slower than it, BENCHMARKS.md;
``explain_implementation`` says whether they cover a call). On CPU they run in the Pallas interpreter (tests); on TPU the xla path is used.
"""
