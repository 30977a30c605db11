"""Where the time of the peer-comparison memory layer goes: an op-level profile of one call on this machine.

    LD_PRELOAD=libtcmalloc_minimal.so.4 python -m benchmarks.profile_layer          # T = 4096, fwd+bwd → RESULTS.md
    python -m benchmarks.profile_layer --length=1024 --mode=fwd --nowrite

The layer and input are benchmarks/ours_worker.py's (width 256, 4 heads of 64, mlp memory with F = 256, C = 64,
batch 2). One warm call runs under ``jax.profiler`` (a Perfetto trace in a temporary folder); the table sums
the XLA ops' own durations: those run once per chunk (the memory scan's loop body, forward and backward) and
those run once per call (projections, convolution, norms, gates, layout copies), then the heaviest op kinds.
"Concurrency" is summed op time over wall time: up to the number of cores when independent ops overlap.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

from absl import app, flags
import jax

from benchmarks import common, ours_worker

_LENGTH = flags.DEFINE_integer("length", 4096, "T")
_MODE = flags.DEFINE_enum("mode", "bwd", ["fwd", "bwd"], "forward only, or forward+backward")
_TOP = flags.DEFINE_integer("top", 12, "op kinds listed")
_WRITE = flags.DEFINE_boolean("write", True, "append the table to benchmarks/RESULTS.md")

_RUNTIME_EVENTS = ("ThunkExecutor", "$", "PjitFunction")  # scheduling and Python frames, not ops


def _op_times(fn, args) -> tuple[float, dict[str, tuple[float, int]]]:
  """(wall s of one traced call, {op name: (summed µs, calls)})."""
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      wall = time.perf_counter() - start
    [path] = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
  ops = collections.defaultdict(lambda: [0.0, 0])
  for event in events:
    name = event.get("name", "")
    if event.get("ph") != "X" or name.startswith(_RUNTIME_EVENTS) or "block_until_ready" in name:
      continue
    ops[name][0] += event.get("dur", 0.0)
    ops[name][1] += 1
  return wall, {name: (us, calls) for name, (us, calls) in ops.items()}


def main(argv):
  del argv
  length, mode = _LENGTH.value, _MODE.value
  fn, args = ours_worker.layer_call(length, mode)
  plan = common.compiled_peak_bytes(fn, *args)
  wall, ops = _op_times(fn, args)
  steps = length // 64
  in_loop = {n: v for n, v in ops.items() if v[1] >= steps}  # run once (or twice) per chunk
  total = sum(us for us, _ in ops.values()) / 1e6
  loop = sum(us for us, _ in in_loop.values()) / 1e6
  kinds = collections.Counter()
  for name, (us, _) in ops.items():
    kinds[re.sub(r"[.\d]+$", "", name) + (" (per chunk)" if name in in_loop else " (per call)")] += us / 1e6
  rows = [["wall time of the call", f"{wall * 1e3:,.0f} ms"],
          ["summed op time", f"{total * 1e3:,.0f} ms"],
          ["concurrency (op time / wall)", f"{total / wall:.2f}"],
          ["ops run per chunk (memory scan)", f"{loop * 1e3:,.0f} ms ({100 * loop / total:.0f}%)"],
          ["ops run once per call", f"{(total - loop) * 1e3:,.0f} ms ({100 * (total - loop) / total:.0f}%)"],
          ["XLA memory plan", "—" if plan is None else f"{plan / 2**20:,.0f} MiB"]]
  rows += [[f"op kind: {kind}", f"{seconds * 1e3:,.0f} ms ({100 * seconds / total:.0f}%)"]
           for kind, seconds in kinds.most_common(_TOP.value)]
  body = (f"Peer-comparison memory layer (benchmarks/ours_worker.py's config), batch 2, T = {length}, "
          f"{'forward' if mode == 'fwd' else 'forward+backward'}, one warm call under jax.profiler "
          f"({steps} chunks).\n\n" + common.markdown_table(["quantity", "value"], rows))
  common.report("Op-level profile of the peer-comparison layer (benchmarks/profile_layer.py)", body, _WRITE.value)


if __name__ == "__main__":
  app.run(main)
