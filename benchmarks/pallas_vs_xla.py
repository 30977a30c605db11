"""Pallas kernels vs the xla path for the linear Omega memory (and flash-linear-attention when installed), on GPU.

    python -m benchmarks.pallas_vs_xla                       # T ∈ {2K, 8K, 32K}, W ∈ {1, 4} → RESULTS.md
    python -m benchmarks.pallas_vs_xla --lengths=2048 --dots=tf32,tf32x3 --value_blocks=16,8 --nowrite

Config: B = 2, H = 16, K = V = 128, bf16 q/k/v, identity φ, l2, C = 64, momentum and retention on (state:
one K×V matrix per head, the same as a gated delta rule). Then Titans-style mlp memory rows (K = V = 64,
F = 128, W = 1), whose kernel keeps W1, W2 and their momenta in one program per head. The kernels get a row per
matmul algorithm (--dots, ``BlockSizes.dot``) and, for the linear memory, per value block (--value_blocks). A
kernel that fails to compile (on an H200: most tilings, for lack of shared memory) is reported in the table, not
fatal. Forward = outputs and final state; forward+backward =
gradient of a scalar of the outputs with respect to q, k, v, every gate and Φ_init. Times are medians after a
warm-up call. Model FLOPs follow CHUNKED.md §C.9 (``benchmarks/flops.py``), the same count for every
implementation; forward+backward counts 3× the forward. Achieved TFLOP/s is compared with a bf16 8192³ matmul
measured in the same process. flash-linear-attention's ``chunk_gated_delta_rule`` (PyTorch + Triton; a delta
rule, W = 1, no momentum) runs at the same B, T, H, K, V when ``import fla`` works — carry its wheel to the GPU
machine. Run through ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp

from atlas_jax.memory import MemoryConfig, memory_op
from atlas_jax.memory.testing import memory_inputs
from pallas_kernels.omega_chunk import BlockSizes, pallas_memory
from benchmarks import common, flops

_LENGTHS = flags.DEFINE_list("lengths", ["2048", "8192", "32768"], "sequence lengths T")
_WINDOWS = flags.DEFINE_list("windows", ["1", "4"], "Omega windows W")
_BATCH = flags.DEFINE_integer("batch", 2, "B")
_HEADS = flags.DEFINE_integer("heads", 16, "H")
_DIM = flags.DEFINE_integer("dim", 128, "K = V")
_CHUNK = flags.DEFINE_integer("chunk", 64, "C")
_MLP_LENGTHS = flags.DEFINE_list("mlp_lengths", ["2048", "8192"], "T for the mlp memory rows (empty: skip them)")
_MLP_DIM = flags.DEFINE_integer("mlp_dim", 64, "K = V of the mlp memory rows (F = 2·K)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per cell (median)")
_DOTS = flags.DEFINE_list("dots", ["tf32"], "the kernels' Triton matmul algorithms (BlockSizes.dot), a row each")
_VALUE_BLOCKS = flags.DEFINE_list("value_blocks", [], "linear memory: value rows per program (BlockSizes.value), a row "
                                  "each (default: BlockSizes.get_default's)")
_FLA = flags.DEFINE_boolean("fla", True, "add flash-linear-attention's rows when it is importable")
_COMPILE_THREADS = flags.DEFINE_integer("compile_threads", 8, "functions compiled concurrently before timing")
_COMPILE_BUDGET = flags.DEFINE_float("compile_budget_s", 600, "time cells still compiling after this long as such")
_WRITE = flags.DEFINE_boolean("write", True, "append the table to benchmarks/RESULTS.md")


def _functions(run):
  forward = jax.jit(lambda q, k, v, g, w: run(q, k, v, g, w))

  def loss(q, k, v, g, w):
    y, _ = run(q, k, v, g, w)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  return forward, jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def _fla_times(batch, length, heads, dim, repeats):
  """(forward s, forward+backward s) of fla's chunk_gated_delta_rule, or None when fla is not importable."""
  try:
    import torch
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
  except Exception as e:  # noqa: BLE001 - any import failure means "not available"
    print(f"flash-linear-attention not available ({type(e).__name__}: {e})")
    return None
  dev = "cuda"
  make = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16)
  q = torch.nn.functional.normalize(make(batch, length, heads, dim), dim=-1).requires_grad_()
  k = torch.nn.functional.normalize(make(batch, length, heads, dim), dim=-1).requires_grad_()
  v = make(batch, length, heads, dim).requires_grad_()
  g = torch.nn.functional.logsigmoid(3 + make(batch, length, heads).float()).requires_grad_()
  beta = torch.sigmoid(make(batch, length, heads).float()).requires_grad_()

  def timed(fn):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn()
      torch.cuda.synchronize()
      times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]

  forward = lambda: chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
  backward = lambda: chunk_gated_delta_rule(q, k, v, g, beta)[0].float().pow(2).sum().backward()
  return timed(forward), timed(backward)


def main(argv):
  del argv
  batch, heads, dim, chunk = _BATCH.value, _HEADS.value, _DIM.value, _CHUNK.value
  peak = flops.matmul_rate(8192, jnp.bfloat16, repeats=5) / 1e12
  print(f"bf16 8192³ matmul: {peak:.0f} TFLOP/s", flush=True)
  rows, ratios = [], []
  note, pending = "", 0
  try:
    pending = _measure_all(rows, ratios, batch, heads, dim, chunk, peak)
  except KeyboardInterrupt:  # gpu_check.sh stops a slow run with SIGINT: keep what was measured
    note = " Interrupted by the time limit: the table holds the cells measured before it."
  columns = ["implementation", "W", "T", "fwd ms", "fwd tok/s", "fwd TFLOP/s", "fwd % peak", "fwd+bwd ms",
             "fwd+bwd tok/s", "fwd+bwd TFLOP/s", "fwd+bwd % peak"]
  body = (f"B = {batch}, H = {heads}, K = V = {dim}, C = {chunk}, bf16 inputs, linear memory (l2, momentum). "
          f"Measured bf16 matmul peak: {peak:.0f} TFLOP/s.{note}\n\n" + common.markdown_table(columns, rows)
          + "\n\nxla time / pallas time, per kernel matmul algorithm (``BlockSizes.dot``):\n\n"
          + common.markdown_table(["cell", "T", "forward", "forward+backward"], ratios))
  common.report("Pallas kernels vs xla path (linear memory, GPU) (benchmarks/pallas_vs_xla.py)", body,
                _WRITE.value)
  if note or pending:  # compilations still running cannot be stopped: exit without waiting for them
    os._exit(130 if note else 0)


def _measure_all(rows, ratios, batch, heads, dim, chunk, peak):
  """Fill rows (one per implementation and cell) and ratios (xla / pallas per cell), printing as it goes; return
  how many compilations are still running.

  Every cell's functions compile ahead of time on a thread pool (compilation, not running, was the slow part of
  the first GPU run; XLA compiles without the GIL). Once all have compiled, or ``--compile_budget_s`` has
  passed, the cells are timed one at a time in order; one still compiling is reported as such.
  """
  sizes = dict(batch=batch, heads=heads)
  cells = [(MemoryConfig(kind="linear", window=w, chunk_size=chunk, momentum=True), length, dim, None)
           for w in map(int, _WINDOWS.value) for length in map(int, _LENGTHS.value)]
  mlp = MemoryConfig(kind="mlp", window=1, chunk_size=chunk, momentum=True)
  cells += [(mlp, length, _MLP_DIM.value, 2 * _MLP_DIM.value) for length in map(int, filter(None, _MLP_LENGTHS.value))]

  def implementations(kind):  # xla, then the kernels per dot algorithm (and value block: linear only)
    blocks = (_VALUE_BLOCKS.value or [None]) if kind == "linear" else [None]
    return ["xla"] + [f"pallas {dot}" + (f" BV={bv}" if bv else "") for dot in _DOTS.value for bv in blocks]

  def emit(row):
    rows.append(row)
    print(" | ".join(row), flush=True)

  pool = concurrent.futures.ThreadPoolExecutor(_COMPILE_THREADS.value)
  try:
    jobs = []
    for config, length, width, hidden in cells:
      shapes = dict(sizes, length=length, key_dim=width, value_dim=width, **({"hidden": hidden} if hidden else {}))
      q, k, v, gates, weights, coeffs = memory_inputs(config, **shapes)
      if hidden:  # memory_inputs' η ≲ 0.3 with heavy-ball momentum overflows the mlp memory within 2,048 tokens
        gates = gates._replace(eta=0.1 * gates.eta)
      args = tuple(x.astype(jnp.bfloat16) for x in (q, k, v)) + (gates, weights)
      jobs.append((config, length, width, hidden, flops.memory_flops(config, **shapes), args,
                   {impl: pool.submit(_compile, config, impl, args, coeffs) for impl in implementations(config.kind)}))
    futures = [f for job in jobs for f in job[-1].values()]
    concurrent.futures.wait(futures, timeout=_COMPILE_BUDGET.value)
    print(f"{sum(f.done() for f in futures)} of {len(futures)} compiled; timing", flush=True)
    for config, length, width, hidden, model_flops, args, compiled in jobs:
      impls = list(compiled)
      times = {impl: _time(impl, compiled[impl], args) for impl in impls}
      for impl in impls:
        emit(_row(impl if hidden is None else f"{impl} (mlp, K = {width})", config.window, length, batch,
                  times[impl], model_flops, peak))
      label = f"linear W={config.window}" if hidden is None else "mlp W=1"
      ratios.extend([f"{label}, {impl}", str(length), _ratio(times, impl, 0), _ratio(times, impl, 1)]
                    for impl in impls[1:])
      if _FLA.value and hidden is None and config.window == 1:
        fla = _fla_times(batch, length, heads, width, _REPEATS.value)
        if fla is not None:  # a delta rule: the W = 1 count without momentum
          delta = MemoryConfig(kind="linear", window=1, chunk_size=chunk, momentum=False)
          delta_flops = flops.memory_flops(delta, length=length, key_dim=width, value_dim=width, **sizes)
          emit(_row("fla chunk_gated_delta_rule", 1, length, batch, fla, delta_flops, peak))
    return sum(not f.done() for f in futures)
  finally:
    pool.shutdown(wait=False, cancel_futures=True)


def _compile(config, impl, args, feature_coeffs):
  """[compiled forward, compiled forward+backward] for one implementation ("xla" or "pallas <dot>[ BV=<n>]");
  each compile time printed. An exception (a kernel that does not compile) is returned, not raised."""
  try:
    if impl == "xla":
      run = functools.partial(memory_op, config=config, implementation="xla")
    else:
      value, key = args[2].shape[-1], args[0].shape[-1]
      _, dot, *bv = impl.split()
      block = BlockSizes.get_default(config.kind, value, key, dot=dot)
      if bv:
        block = dataclasses.replace(block, value=int(bv[0].removeprefix("BV=")))
      run = functools.partial(pallas_memory, config=config, feature_coeffs=feature_coeffs, block_sizes=block)
    out = []
    for fn, label in zip(_functions(run), ("forward", "forward+backward")):
      start = time.perf_counter()
      out.append(fn.lower(*args).compile())
      print(f"{impl} {config.kind} W={config.window} T={args[0].shape[1]}: {label} compiled in "
            f"{time.perf_counter() - start:.1f} s", flush=True)
    return out
  except Exception as e:  # noqa: BLE001 - report a kernel that does not compile instead of stopping
    return e


def _time(impl, future, args):
  """(forward s, forward+backward s), or why not: "failed" (the error printed), "not finite" or "compiling"."""
  if not future.done():
    return "compiling"
  compiled = future.result()
  if isinstance(compiled, Exception):
    print(f"{impl} failed: {type(compiled).__name__}: {str(compiled)[:300]}", flush=True)
    return "failed"
  try:
    return tuple(common.time_call(fn, *args, repeats=_REPEATS.value) for fn in compiled)
  except common.NonFiniteError as e:
    print(f"{impl}: {e}", flush=True)
    return "not finite"


def _ratio(cell, impl, i):
  a, b = cell["xla"], cell[impl]
  return next((x for x in (a, b) if isinstance(x, str)), None) or f"{a[i] / b[i]:.2f}×"


def _row(name, window, length, batch, times, model_flops, peak):
  if isinstance(times, str):
    return [name, str(window), str(length)] + [times] * 8
  (fwd, bwd), tokens = times, batch * length
  fwd_rate, bwd_rate = model_flops / fwd / 1e12, 3 * model_flops / bwd / 1e12
  return [name, str(window), str(length), f"{fwd * 1e3:.2f}", f"{tokens / fwd:,.0f}", f"{fwd_rate:.1f}",
          f"{100 * fwd_rate / peak:.1f}", f"{bwd * 1e3:.2f}", f"{tokens / bwd:,.0f}", f"{bwd_rate:.1f}",
          f"{100 * bwd_rate / peak:.1f}"]


if __name__ == "__main__":
  app.run(main)
