"""Token-mixer scaling with T: ATLAS, Titans-style and delta-style memory layers against softmax attention.

    LD_PRELOAD=libtcmalloc_minimal.so.4 python -m benchmarks.layer_scaling           # → RESULTS.md

Width 256, batch 1, float32. Memory layers: 4 heads of 64 (ATLAS: 8 heads of 32 with degree-2 φ, W = 8, Muon at
chunk granularity), C = 64. Attention: 4 heads of 64, causal, ``jax.nn.dot_product_attention`` (XLA on CPU).
A cell is skipped when XLA's memory plan exceeds --max_plan_gib or one call exceeds --max_call_s (then it is
timed once). Where the memory layers' lines cross attention's is the point of the table.

Each memory layer runs once per memory-op implementation in --implementations (default: reference and xla on
CPU, xla and pallas on GPU; the ATLAS layer's Muon has no Pallas kernel, so its pallas row falls back to xla and
is left out). The per-token reference stops at --max_reference_length.
"""

from __future__ import annotations

import time

from absl import app, flags
import jax
import jax.numpy as jnp
from flax import nnx

from atlas_jax.attention import Attention
from atlas_jax.memory_layer import MemoryLayer
from atlas_jax.presets import get_preset
from benchmarks import common
from pallas_kernels.omega_chunk.ops import unsupported_reason

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "4096", "16384", "65536"], "sequence lengths")
_MAX_PLAN = flags.DEFINE_float("max_plan_gib", 12.0, "skip cells whose XLA memory plan is larger")
_MAX_CALL = flags.DEFINE_float("max_call_s", 30.0, "time a cell once when a call is slower than this")
_IMPLEMENTATIONS = flags.DEFINE_list("implementations", None,
                                     "memory-op implementations (default: reference,xla on CPU; xla,pallas on GPU)")
_MAX_REFERENCE = flags.DEFINE_integer("max_reference_length", 4096, "longest T for the per-token reference")
_WRITE = flags.DEFINE_boolean("write", True, "append the table to benchmarks/RESULTS.md")

_MEMORY_LAYERS = {  # name: (preset, memory head dim)
    "ATLAS memory layer": ("atlas", 32),
    "Titans-style (mlp, momentum)": ("titans", 64),
    "delta-style (linear)": ("delta", 64),
}


def _layers(implementations):
  """{(name, implementation): layer}; attention once, memory layers per implementation."""
  width = 256
  layers = {}
  for name, (preset, head_dim) in _MEMORY_LAYERS.items():
    memory = get_preset(preset, "170m").memory
    for impl in implementations:
      if impl == "pallas" and unsupported_reason(memory, fresh_state=True, dtype=jnp.float32):
        continue  # no kernel for this memory (ATLAS: Muon)
      config = get_preset(preset, "tiny", width=width, memory_head_dim=head_dim, memory=memory,
                          memory_implementation=impl)
      layers[name, impl] = MemoryLayer(config, rngs=nnx.Rngs(0))
  layers["softmax attention", "xla"] = Attention(width, 4, rngs=nnx.Rngs(0))
  return layers


def _cell(layer, length):
  graphdef, params = nnx.split(layer)
  apply = lambda p, x: nnx.merge(graphdef, p)(x)[0]
  x = jax.random.normal(jax.random.PRNGKey(0), (1, length, 256))
  out = []
  for fn in (jax.jit(apply), jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2)))):
    plan = common.compiled_peak_bytes(fn, params, x)
    if plan is not None and plan > _MAX_PLAN.value * 2**30:
      out.append((None, plan))
      continue
    start = time.perf_counter()
    result = jax.block_until_ready(fn(params, x))
    first = time.perf_counter() - start
    common.check_finite(f"{type(layer).__name__} at T = {length}", result)
    seconds = first if first > _MAX_CALL.value else common.time_call(fn, params, x, repeats=3)
    out.append((seconds, plan))
  return out


def _measure_all(rows, implementations):
  for (name, impl), layer in _layers(implementations).items():
    for length in (int(t) for t in _LENGTHS.value):
      if impl == "reference" and length > _MAX_REFERENCE.value:
        continue
      print(f"[layer_scaling] {name} [{impl}] T={length} ...", flush=True)
      try:
        (fwd, _), (bwd, plan) = _cell(layer, length)
      except Exception as e:  # noqa: BLE001 - e.g. a kernel over the GPU's shared memory: report, go on
        print(f"  failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        rows.append([name, impl, f"{length:,}"] + ["failed"] * 3)
        break  # longer T fails the same way
      fmt = lambda s: "skipped (memory)" if s is None else f"{length / s:,.0f}"
      rows.append([name, impl, f"{length:,}", fmt(fwd), fmt(bwd), "—" if plan is None else f"{plan / 2**30:.2f}"])
      print("  " + " | ".join(rows[-1]), flush=True)


def main(argv):
  del argv
  implementations = _IMPLEMENTATIONS.value or (
      ["reference", "xla"] if jax.default_backend() == "cpu" else ["xla", "pallas"])
  rows, note = [], ""
  try:
    _measure_all(rows, implementations)
  except KeyboardInterrupt:  # gpu_check.sh stops a slow run with SIGINT: keep what was measured
    note = " Interrupted by the time limit: the table holds the cells measured before it."
  body = ("Width 256, batch 1, float32; tokens/s (median of 3 after warm-up, or one call when slower than "
          f"{_MAX_CALL.value:.0f} s); forward+backward plan is XLA's memory plan.{note}\n\n" +
          common.markdown_table(["layer", "implementation", "T", "fwd tok/s", "fwd+bwd tok/s", "fwd+bwd plan GiB"],
                                rows))
  common.report("Layer scaling with T (benchmarks/layer_scaling.py)", body, _WRITE.value)


if __name__ == "__main__":
  app.run(main)
