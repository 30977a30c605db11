"""Throughput and memory of the memory op: reference (per-token) vs xla (chunk-parallel), over T.

    LD_PRELOAD=libtcmalloc_minimal.so.4 python -m benchmarks.memory_op            # full table → RESULTS.md
    python -m benchmarks.memory_op --lengths=256,1024 --nowrite                   # quick look

Model-FLOP utilisation: the Muon-off rows print model FLOPs per second (CHUNKED.md §C.9) as a share of a 1024³
float32 matmul timed in the same process (all cores).

Config (flags): B = 2, H = 4, K = V = 64, mlp memory with F = 256, identity φ, l2, C = 64, W = 4, momentum on;
Muon off, Muon at chunk granularity (one Newton–Schulz per chunk) and Muon at every position. Per-position Muon
runs NS on every token's momentum in both implementations — 77–95% of the FLOPs (CHUNKED.md §C.9) — so there the
chunked form cannot be much faster than the reference; it is timed at short T only. On CPU the Muon-off xla rows
are repeated with the heads split over --devices XLA host devices (``jax_num_cpu_devices``), each device running
its heads' chunk scan under ``jax.shard_map`` (atlas_jax/memory/sharded.py): XLA:CPU runs one scan's small products
on about one core, so this is how the op uses the others. Memory inputs are ``memory_inputs``' with η × 0.1 (its η
overflows this MLP memory within 1,024 tokens). Forward = outputs and final state; forward+backward = gradient of a
scalar of the outputs with respect to q, k, v, every gate and Φ_init. Times are medians after a warm-up call;
memory is XLA's static plan (arguments + outputs + temporaries) of the compiled call. Both implementations run
with remat=True (xla: per chunk; reference: checkpointed blocks of 4·C tokens, without which its backward keeps
every token's weights, ~5.5 MB per token here). The reference's forward+backward is skipped past
--max_reference_backward_length. On CPU, preload tcmalloc (Debian libtcmalloc-minimal4): glibc malloc makes
these numbers swing several-fold. The allocator is recorded.
"""

from __future__ import annotations

import contextlib
import functools

from absl import app, flags
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from atlas_jax.memory import MemoryConfig, memory_op
from atlas_jax.sharding import DEFAULT_RULES, logical_rules
from atlas_jax.training.mesh import make_mesh
from benchmarks import common
from benchmarks.flops import matmul_rate, memory_flops
from atlas_jax.memory.testing import memory_inputs

_LENGTHS = flags.DEFINE_list("lengths", ["256", "1024", "4096", "16384"], "sequence lengths T")
_MAX_REFERENCE = flags.DEFINE_integer("max_reference_length", 4096, "longest T timed for the reference")
_MAX_REFERENCE_BWD = flags.DEFINE_integer(
    "max_reference_backward_length", 4096, "longest T for the reference's forward+backward")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per cell (median)")
_BATCH = flags.DEFINE_integer("batch", 2, "B")
_HEADS = flags.DEFINE_integer("heads", 4, "H")
_DIM = flags.DEFINE_integer("dim", 64, "K = V")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "F")
_CHUNK = flags.DEFINE_integer("chunk", 64, "C")
_WINDOW = flags.DEFINE_integer("window", 4, "W")
_MUON = flags.DEFINE_list("muon", ["off", "chunk", "on"],
                          "Muon settings: off, chunk (one NS per chunk, SPEC §3.6), on (NS at every position)")
_MUON_LENGTHS = flags.DEFINE_list("muon_lengths", ["256", "1024"],
                                  "T for per-position Muon (NS-bound: the same NS work in both paths)")
_MUON_MAX_REFERENCE = flags.DEFINE_integer("muon_max_reference_length", 1024,
                                           "longest T for the reference with Muon (NS at every token)")
_DEVICES = flags.DEFINE_integer("devices", 2, "on CPU, XLA host devices for the xla rows with the heads split "
                                "over them (1: no such rows)")
_WRITE = flags.DEFINE_boolean("write", True, "append the table to benchmarks/RESULTS.md")
_SPLIT = "xla, heads split"


def _functions(config: MemoryConfig, implementation: str):
  run = functools.partial(memory_op, config=config, implementation=implementation, remat=True)
  forward = jax.jit(lambda q, k, v, g, w: run(q, k, v, g, w))

  def loss(q, k, v, g, w):
    y, state = run(q, k, v, g, w)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  backward = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
  return forward, backward


def _cell(config, implementation, length, with_backward):
  inputs = memory_inputs(config, batch=_BATCH.value, length=length, heads=_HEADS.value, key_dim=_DIM.value,
                         value_dim=_DIM.value, hidden=_HIDDEN.value)[:5]
  # memory_inputs' η (≲ 0.3/W, sized for short test sequences) overflows this MLP memory within 1,024 tokens;
  # a tenth of it stays finite (the time of a call does not depend on the values).
  inputs = inputs[:3] + (inputs[3]._replace(eta=0.1 * inputs[3].eta), inputs[4])
  context = contextlib.nullcontext()
  if implementation == _SPLIT:  # the heads over a tensor axis of host devices, as the training loop shards them
    mesh = make_mesh((1, 1, _DEVICES.value))
    put = lambda tree, spec: jax.device_put(tree, NamedSharding(mesh, spec))
    heads = PartitionSpec(None, None, "tensor")
    inputs = put(inputs[:4], heads) + (put(inputs[4], PartitionSpec("tensor")),)
    context = _on_mesh(mesh)
  forward, backward = _functions(config, "xla" if implementation == _SPLIT else implementation)
  with context:
    t_fwd = common.time_call(forward, *inputs, repeats=_REPEATS.value)
    if not with_backward:
      return t_fwd, None, None
    t_bwd = common.time_call(backward, *inputs, repeats=_REPEATS.value)
    plan = common.compiled_peak_bytes(backward, *inputs)  # per device
    return t_fwd, t_bwd, plan and plan * (_DEVICES.value if implementation == _SPLIT else 1)


@contextlib.contextmanager
def _on_mesh(mesh):
  with jax.set_mesh(mesh), logical_rules(DEFAULT_RULES):
    yield


def main(argv):
  del argv
  jax.config.update("jax_num_cpu_devices", _DEVICES.value)  # before the backend starts; CPU only
  split = _DEVICES.value > 1 and jax.default_backend() == "cpu"
  lengths = [int(t) for t in _LENGTHS.value]
  columns = ["Muon", "impl", "T", "fwd s", "fwd tok/s", "fwd % matmul", "fwd+bwd s", "fwd+bwd tok/s",
             "fwd+bwd % matmul", "fwd+bwd plan MiB"]
  rows, times = [], {}
  peak = matmul_rate()
  print(f"[memory_op] 1024³ float32 matmul: {peak / 1e9:,.0f} GFLOP/s", flush=True)
  for muon in _MUON.value:
    config = MemoryConfig(kind="mlp", window=_WINDOW.value, chunk_size=_CHUNK.value, momentum=True,
                          muon=muon != "off", granularity="chunk" if muon == "chunk" else "token")
    max_reference = _MAX_REFERENCE.value if muon == "off" else _MUON_MAX_REFERENCE.value
    for length in ([int(t) for t in _MUON_LENGTHS.value] if muon == "on" else lengths):
      # Back to back, so machine drift hits all alike.
      for implementation in ("reference", "xla") + ((_SPLIT,) if split and not config.muon else ()):
        if implementation == "reference" and length > max_reference:
          continue
        print(f"[memory_op] muon={muon} {implementation} T={length} ...", flush=True)
        with_backward = implementation != "reference" or length <= _MAX_REFERENCE_BWD.value
        t_fwd, t_bwd, mem = _cell(config, implementation, length, with_backward)
        times[muon, implementation, length] = (t_fwd, t_bwd)
        tokens = _BATCH.value * length
        model = None if config.muon else memory_flops(config, batch=_BATCH.value, length=length,
                                                      heads=_HEADS.value, key_dim=_DIM.value,
                                                      value_dim=_DIM.value, hidden=_HIDDEN.value)
        share = lambda flop, seconds: "—" if model is None else f"{100 * flop / seconds / peak:.0f}%"
        row = [muon, implementation, str(length), f"{t_fwd:.3f}", f"{tokens / t_fwd:,.0f}",
               share(model, t_fwd)]
        if t_bwd is None:
          row += ["skipped"] * 4
        else:
          row += [f"{t_bwd:.3f}", f"{tokens / t_bwd:,.0f}", share(3 * (model or 0), t_bwd),
                  "n/a" if mem is None else f"{mem / 2**20:,.0f}"]
        rows.append(row)
        print("  " + " | ".join(row), flush=True)

  summary = []
  for muon in _MUON.value:
    muon_lengths = [int(t) for t in _MUON_LENGTHS.value] if muon == "on" else lengths
    hi = max(muon_lengths)
    lo = 1024 if 1024 in muon_lengths and hi > 1024 else min(muon_lengths)  # the acceptance's 16K / 1K
    if (muon, "xla", hi) in times and (muon, "xla", lo) in times and hi > lo:
      for i, name in enumerate(("fwd", "fwd+bwd")):
        ratio = times[muon, "xla", hi][i] / times[muon, "xla", lo][i]
        summary.append(f"- Muon {muon}, xla {name}: time(T={hi}) / time(T={lo}) = {ratio:.1f} "
                       f"(T ratio {hi // lo})")
    for length in muon_lengths:
      if (muon, "reference", length) in times and (muon, "xla", length) in times:
        ref, xla = times[muon, "reference", length], times[muon, "xla", length]
        line = f"- Muon {muon}, T={length}: speed-up of xla over reference {ref[0] / xla[0]:.1f}× (fwd)"
        if ref[1] is not None:
          line += f", {ref[1] / xla[1]:.1f}× (fwd+bwd)"
        summary.append(line)
  config_line = (f"B={_BATCH.value}, H={_HEADS.value}, K=V={_DIM.value}, mlp F={_HIDDEN.value}, identity φ, l2, "
                 f"C={_CHUNK.value}, W={_WINDOW.value}, momentum on; float32; remat on (both). % matmul: model FLOPs "
                 f"(CHUNKED.md §C.9, benchmarks/flops.py; fwd+bwd = 3× fwd; Muon off only) per second over a "
                 f"1024³ float32 matmul in this process ({peak / 1e9:,.0f} GFLOP/s). \"{_SPLIT}\": xla with the "
                 f"heads split over {_DEVICES.value} XLA host devices of this CPU (one mesh tensor axis, as the "
                 "training loop shards heads); its plan is the per-device plan × devices. fwd+bwd plan MiB: XLA's "
                 "static memory plan of the compiled forward+backward (arguments + outputs + temporaries), not a "
                 "measured peak.")
  body = config_line + "\n\n" + common.markdown_table(columns, rows) + "\n\n" + "\n".join(summary)
  common.report("Memory op: reference vs xla (benchmarks/memory_op.py)", body, _WRITE.value)


if __name__ == "__main__":
  app.run(main)
