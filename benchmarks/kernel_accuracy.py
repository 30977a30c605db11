"""Accuracy of the compiled Pallas kernels per Triton matmul algorithm, against the xla path (GPU).

    python -m benchmarks.kernel_accuracy --dots=ieee,tf32x3,tf32 --cases=mlp-iden-dot-W1-C16-T37-mom-res-bfloat16

For each sampled case of tests/pallas/test_omega_chunk.py (by test id) and each ``BlockSizes.dot``, prints the
max relative error (``tests.helpers.max_rel_error``) of y, the compared state and each gradient next to the
tests' tolerance, then the table of all of them, which goes to benchmarks/RESULTS.md like the other scripts'
(``--nowrite``: print only). A case that fails (e.g. a kernel over the GPU's shared memory) is a row saying so.
The xla path runs at float32 matmul precision. Cases compile concurrently on threads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

from absl import app, flags
import jax
import jax.numpy as jnp

from benchmarks import common
from pallas_kernels.omega_chunk import BlockSizes
from tests.helpers import compared_state, max_rel_error
from tests.pallas.test_omega_chunk import CASES, TOL, _id, _inputs, _run

_DOTS = flags.DEFINE_list("dots", ["ieee", "tf32", "tf32x3"], "BlockSizes.dot values")
_CASES = flags.DEFINE_list("cases", [], "test ids (default: every sampled case)")
_WRITE = flags.DEFINE_boolean("write", True, "append the table to benchmarks/RESULTS.md")
_ERRORS = ("y", "state", "dq", "dk", "dv", "dgates", "dΦ")


def _errors(case, dot):
  config, length, dtype = case
  inputs = _inputs(config, length, dtype)
  with jax.default_matmul_precision("float32"):
    y_x, s_x, g_x = _run(config, "xla", inputs)
  block = dataclasses.replace(BlockSizes.get_default(config.kind, 16, 16), value=16, dot=dot)  # V pads to 16
  y_p, s_p, g_p = _run(config, "pallas", inputs, interpret=False, block_sizes=block)
  f32 = lambda t: jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), t)
  out = {"y": max_rel_error(f32(y_p), f32(y_x)), "state": max_rel_error(compared_state(s_p), compared_state(s_x))}
  out.update({f"d{name}": max_rel_error(f32(a), f32(b)) for name, a, b in zip(("q", "k", "v", "gates", "Φ"), g_p, g_x)})
  return out


def main(argv):
  del argv
  cases = [c for c in CASES if not _CASES.value or _id(c) in _CASES.value]
  rows = []
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    jobs = {(_id(c), dot): pool.submit(_errors, c, dot) for c in cases for dot in _DOTS.value}
    for (case_id, dot), job in jobs.items():
      dtype = next(c[2] for c in cases if _id(c) == case_id)
      tolerance = ", ".join(f"{k} {v:g}" for k, v in TOL[dtype].items())
      try:
        errors = job.result()
      except Exception as e:  # noqa: BLE001 - report and go on
        print(f"{case_id} {dot}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        rows.append([case_id, dot] + [f"failed: {type(e).__name__}"] + ["—"] * (len(_ERRORS) - 1) + [tolerance])
        continue
      print(f"{case_id} {dot}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
            + f"  (tolerances {TOL[dtype]})", flush=True)
      rows.append([case_id, dot] + [f"{errors[k]:.2e}" if k in errors else "—" for k in _ERRORS] + [tolerance])
  body = ("Max error relative to the largest value (tests.helpers.max_rel_error) of the compiled Pallas kernels "
          "against the xla path at float32 matmul precision, per sampled case of tests/pallas/test_omega_chunk.py "
          "and kernel matmul algorithm (BlockSizes.dot); the tests' tolerances per dtype in the last column.\n\n"
          + common.markdown_table(["case", "dot"] + list(_ERRORS) + ["tolerance (tests)"], rows))
  common.report("Pallas kernel accuracy per matmul algorithm (benchmarks/kernel_accuracy.py)", body, _WRITE.value)


if __name__ == "__main__":
  app.run(main)
