"""Pallas kernels for the Omega-rule chunk update (forward + backward behind ``jax.custom_vjp``).

    chunk_common.py  a chunk's inputs, matmuls, the coefficient matrices (CHUNKED.md §C.2–§C.4) and their
                     state-free products (``step_coefficients``, batched over chunks before the kernels)
    linear_math.py   the linear memory's state step: forward and hand-derived backward
    mlp_math.py      the mlp / gated_mlp memories' state step: forward (backward = its vjp, inside the kernel)
    kernel.py        BlockSizes, the forward and backward kernels, ``omega_chunk`` on prepared inputs
    reference.py     the same chunk math under ``lax.scan`` (autodiff checks the kernels' backward)
    ops.py           the memory op's ``implementation="pallas"``: input preparation, support checks, final state
"""

from pallas_kernels.omega_chunk.kernel import BlockSizes, omega_chunk
from pallas_kernels.omega_chunk.ops import pallas_memory, unsupported_reason

__all__ = ["BlockSizes", "omega_chunk", "pallas_memory", "unsupported_reason"]
