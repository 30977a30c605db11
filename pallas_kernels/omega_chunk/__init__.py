"""Pallas kernels for the Omega-rule chunk update of the linear memory (forward + backward, ``jax.custom_vjp``).

    linear_math.py  one chunk's forward and hand-derived backward (kernel-safe jax.numpy)
    linear.py       BlockSizes, the two kernels, ``omega_linear`` (custom_vjp) on prepared inputs
    reference.py    the same chunk math under ``lax.scan`` (autodiff checks the kernels' backward)
    ops.py          the memory op's ``implementation="pallas"``: input preparation, support checks, final state
"""

from pallas_kernels.omega_chunk.linear import BlockSizes, omega_linear
from pallas_kernels.omega_chunk.ops import pallas_memory, unsupported_reason

__all__ = ["BlockSizes", "omega_linear", "pallas_memory", "unsupported_reason"]
