"""Token-mixer scaling with T: ATLAS, Titans-style and delta-style memory layers against softmax attention.

    LD_PRELOAD=libtcmalloc_minimal.so.4 python -m benchmarks.layer_scaling           # → RESULTS.md

Width 256, batch 1, float32. Memory layers: 4 heads of 64 (ATLAS: 8 heads of 32 with degree-2 φ, W = 8, Muon at
chunk granularity), C = 64. Attention: 4 heads of 64, causal, ``jax.nn.dot_product_attention`` (XLA on CPU).
Each cell reports the forward and the forward+backward (gradient of a scalar with respect to the parameters)
with XLA's memory plan of each (arguments + outputs + temporaries). A call is not run when its plan exceeds
--max_plan_gib (default: 12 GiB on CPU, 70% of the accelerator memory JAX's allocator may use elsewhere); one
slower than --max_call_s is timed once. Where the memory layers' lines cross attention's is the point of the table.

Every cell's two functions are compiled before any is timed, on --compile_threads threads (compilation is most
of a GPU run's time and runs on the host's cores); the timings then run one at a time, with no compilation
beside them unless --compile_budget_s ran out first (cells still compiling then are reported as such).

Each memory layer runs once per memory-op implementation in --implementations (default: reference and xla on
CPU, xla and pallas on GPU; the ATLAS layer's Muon has no Pallas kernel, so its pallas row falls back to xla and
is left out). The per-token reference stops at --max_reference_length.
"""

from __future__ import annotations

import concurrent.futures
import os
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
_MAX_PLAN = flags.DEFINE_float("max_plan_gib", None, "skip calls whose XLA memory plan is larger (default: 12 on "
                                "CPU, 70% of the accelerator memory JAX's allocator may use elsewhere)")
_MAX_CALL = flags.DEFINE_float("max_call_s", 30.0, "time a cell once when a call is slower than this")
_IMPLEMENTATIONS = flags.DEFINE_list("implementations", None,
                                     "memory-op implementations (default: reference,xla on CPU; xla,pallas on GPU)")
_MAX_REFERENCE = flags.DEFINE_integer("max_reference_length", 4096, "longest T for the per-token reference")
_COMPILE_THREADS = flags.DEFINE_integer("compile_threads", 2, "functions compiled concurrently before timing")
_COMPILE_BUDGET = flags.DEFINE_float("compile_budget_s", None, "start timing after this long even if some cells are "
                                     "still compiling (reported as such); default: wait for all")
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


def _max_plan_bytes() -> float:
  if _MAX_PLAN.value is not None:
    return _MAX_PLAN.value * 2**30
  device = jax.devices()[0]
  limit = (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None
  return 0.7 * limit if limit else 12.0 * 2**30


def _functions(layer):
  graphdef, params = nnx.split(layer)
  apply = lambda p, x: nnx.merge(graphdef, p)(x)[0]
  return params, (jax.jit(apply), jax.jit(jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2))))


def _compile(fn, params, length):
  return fn.lower(params, jax.ShapeDtypeStruct((1, length, 256), jnp.float32)).compile()


def _time(name, compiled, params, length, max_plan):
  """(seconds or None when the plan is over the limit, plan bytes) of one compiled call."""
  plan = common.plan_bytes(compiled)
  if plan is not None and plan > max_plan:
    return None, plan
  x = jax.random.normal(jax.random.PRNGKey(0), (1, length, 256))
  start = time.perf_counter()
  result = jax.block_until_ready(compiled(params, x))
  first = time.perf_counter() - start
  common.check_finite(f"{name} at T = {length}", result)
  seconds = first if first > _MAX_CALL.value else common.time_call(compiled, params, x, repeats=3)
  return seconds, plan


def _measure_all(rows, implementations, pool, futures_out):
  """Compile every cell's forward and forward+backward on `pool` (their futures appended to `futures_out`), then
  time them in table order."""
  max_plan = _max_plan_bytes()
  jobs = []
  for (name, impl), layer in _layers(implementations).items():
    params, fns = _functions(layer)
    for length in (int(t) for t in _LENGTHS.value):
      if impl == "reference" and length > _MAX_REFERENCE.value:
        continue
      jobs.append((name, impl, length, params, [pool.submit(_compile, fn, params, length) for fn in fns]))
      futures_out.extend(jobs[-1][-1])
  failed = set()
  concurrent.futures.wait(futures_out, timeout=_COMPILE_BUDGET.value)
  print(f"[layer_scaling] {sum(f.done() for f in futures_out)} of {len(futures_out)} functions compiled; timing",
        flush=True)
  for name, impl, length, params, futures in jobs:
    if (name, impl) in failed:  # longer T fails the same way
      for future in futures:
        future.cancel()
      continue
    print(f"[layer_scaling] {name} [{impl}] T={length} ...", flush=True)
    if not all(f.done() for f in futures):
      print("  still compiling", flush=True)
      rows.append([name, impl, f"{length:,}"] + ["still compiling"] * 4)
      continue
    try:
      (fwd, fwd_plan), (bwd, bwd_plan) = [_time(name, f.result(), params, length, max_plan) for f in futures]
    except Exception as e:  # noqa: BLE001 - e.g. a kernel over the GPU's shared memory: report, go on
      print(f"  failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
      rows.append([name, impl, f"{length:,}"] + ["failed"] * 4)
      failed.add((name, impl))
      continue
    rate = lambda s: "skipped (memory)" if s is None else f"{length / s:,.0f}"
    gib = lambda b: "—" if b is None else f"{b / 2**30:.2f}"
    rows.append([name, impl, f"{length:,}", rate(fwd), rate(bwd), gib(fwd_plan), gib(bwd_plan)])
    print("  " + " | ".join(rows[-1]), flush=True)


def main(argv):
  del argv
  implementations = _IMPLEMENTATIONS.value or (
      ["reference", "xla"] if jax.default_backend() == "cpu" else ["xla", "pallas"])
  rows, note, futures = [], "", []
  pool = concurrent.futures.ThreadPoolExecutor(max(_COMPILE_THREADS.value, 1))
  try:
    _measure_all(rows, implementations, pool, futures)
  except KeyboardInterrupt:  # gpu_check.sh stops a slow run with SIGINT: keep what was measured
    note = " Interrupted by the time limit: the table holds the cells measured before it."
  limit = _max_plan_bytes() / 2**30
  body = ("Width 256, batch 1, float32; tokens/s (median of 3 after warm-up, or one call when slower than "
          f"{_MAX_CALL.value:.0f} s); the plans are XLA's memory plans (arguments + outputs + temporaries) of the "
          f"forward and of the forward+backward; a call whose plan exceeds {limit:,.2f} GiB (--max_plan_gib) is not "
          f"run (\"skipped (memory)\").{note}\n\n" +
          common.markdown_table(["layer", "implementation", "T", "fwd tok/s", "fwd+bwd tok/s", "fwd plan GiB",
                                 "fwd+bwd plan GiB"], rows))
  common.report("Layer scaling with T (benchmarks/layer_scaling.py)", body, _WRITE.value)
  if any(not f.done() for f in futures):  # compilations still running cannot be stopped: exit without them
    os._exit(130 if note else 0)


if __name__ == "__main__":
  app.run(main)
