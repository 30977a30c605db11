"""Our memory layer against titans-pytorch's NeuralMemory on the same CPU, one command, same allocator.

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
    /tmp/torchvenv/bin/pip install titans-pytorch==0.5.5
    LD_PRELOAD=libtcmalloc_minimal.so.4 python -m benchmarks.peers_cpu --torch_python=/tmp/torchvenv/bin/python

Matched configuration: width 256, 4 heads of 64, chunk 64, 2-layer MLP memory with expansion 4, batch 2,
T ∈ {1024, 4096}. Each cell runs in a fresh process (so peak RSS is that cell's): median of --repeats timed calls
after a warm-up; --trials such processes per cell, run in rounds over the sides, and the table gives the
medians over trials (this machine's speed drifts by 15–25% over minutes). Peak RSS is read twice: after the
warm-up call (what one call needs) and after all calls (allocators can grow later: under tcmalloc our side at
T = 4096 sometimes takes a second ~420 MiB set of pages within a few calls). Forward+backward is the gradient of Σ y²
with respect to the input (and, for us, the parameters). Semantics differ and are stated in the table: we read
the memory at every token (y_t = M(q_t; Φ_t) after token t's update, gradients anchored per chunk of 64);
titans-pytorch reads at chunk granularity and, in its default mode (batch_size=None), takes every gradient at
the call's initial weights; batch_size=64 re-anchors every chunk as Titans and SPEC.md define it. Our second row
("chunk reads") runs the same layer at chunk granularity (SPEC.md §3.6): reads at each chunk's anchor and weights
that change once per chunk, the structure of titans-pytorch's batch_size=64 (its decay and momentum gates are per
chunk, ours per token). The third and fourth rows run the first two on two XLA host devices with the heads split
over them (as the training loop shards heads over a tensor axis): the same cores, two heads' chunk scan per device.
Outputs are checked after the warm-up call: ours must be finite (the worker fails
otherwise); titans-pytorch's finiteness is reported in the table, not enforced (its hyperparameters are its own).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

from benchmarks import common

_TORCH_PYTHON = flags.DEFINE_string("torch_python", None, "python of a venv with torch and titans-pytorch")
_LENGTHS = flags.DEFINE_list("lengths", ["1024", "4096"], "sequence lengths")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per process (median)")
_TRIALS = flags.DEFINE_integer("trials", 3, "fresh processes per cell, run in rounds across the sides (median)")
_WRITE = flags.DEFINE_boolean("write", True, "append the table to benchmarks/RESULTS.md")

_HERE = os.path.dirname(os.path.abspath(__file__))


def _run(cmd: list[str]) -> dict:
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(_HERE))
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_trial(trials: list[dict]) -> dict:
  """Per key, the median over trials of a cell's numbers (the first trial's value for strings); "finite" holds
  only if it held in every trial."""
  cell = {key: statistics.median(t[key] for t in trials) if isinstance(trials[0][key], (int, float))
          else trials[0][key] for key in trials[0]}
  cell["finite"] = all(t.get("finite", True) for t in trials)
  return cell


def main(argv):
  del argv
  sides = [(name, semantics,
            lambda t, m, g=granularity, d=devices: [
                sys.executable, "-m", "benchmarks.ours_worker", f"--length={t}", f"--mode={m}", f"--granularity={g}",
                f"--repeats={_REPEATS.value}", f"--devices={d}"])
           for name, semantics, granularity, devices in (
               ("atlas-jax memory layer", "per-token reads, anchored per chunk of 64", "token", 1),
               ("atlas-jax memory layer, chunk reads", "chunk reads, re-anchored every 64", "chunk", 1),
               ("atlas-jax memory layer, heads on 2 host devices",
                "per-token reads, anchored per chunk of 64", "token", 2),
               ("atlas-jax memory layer, chunk reads, heads on 2 host devices",
                "chunk reads, re-anchored every 64", "chunk", 2))]
  ours = [name for name, _, _ in sides]
  if _TORCH_PYTHON.value:
    worker = os.path.join(_HERE, "titans_worker.py")
    for batch_size, semantics in ((0, "chunk reads, all gradients at the initial weights (batch_size=None)"),
                                  (64, "chunk reads, re-anchored every 64 (batch_size=64)")):
      sides.append((f"titans-pytorch{'' if not batch_size else ' batch_size=64'}", semantics,
                    lambda t, m, b=batch_size: [_TORCH_PYTHON.value, worker, f"--length={t}", f"--mode={m}",
                                                f"--batch_size={b}", f"--repeats={_REPEATS.value}"]))
  else:
    print("--torch_python not given: timing atlas-jax only.")
  rows, results = [], {}
  for length in (int(t) for t in _LENGTHS.value):
    trials = collections.defaultdict(list)
    for trial in range(_TRIALS.value):  # rounds across sides, so slow drift of the machine hits each side alike
      for name, _, command in sides:
        for mode in ("fwd", "bwd"):
          print(f"[peers_cpu] {name} T={length} {mode} (trial {trial + 1}/{_TRIALS.value}) ...", flush=True)
          trials[name, mode].append(_run(command(length, mode)))
    for name, semantics, _ in sides:
      cell = {mode: _median_trial(trials[name, mode]) for mode in ("fwd", "bwd")}
      results[name, length] = cell
      finite = cell["fwd"]["finite"] and cell["bwd"]["finite"]
      rows.append([name, semantics + ("" if finite else "; **outputs not finite**"), str(length),
                   f"{cell['fwd']['tokens_per_s']:,.0f}",
                   f"{cell['bwd']['tokens_per_s']:,.0f}", f"{cell['fwd']['peak_rss_mib']:,.0f}",
                   f"{cell['bwd']['warm_rss_mib']:,.0f}", f"{cell['bwd']['peak_rss_mib']:,.0f}"])
      print("  " + " | ".join(rows[-1]), flush=True)
  summary = []
  theirs = [name for name, _, _ in sides[len(ours):]]
  for mine, name, length in itertools.product(ours, theirs, (int(t) for t in _LENGTHS.value)):
    a, b = results[mine, length], results[name, length]
    summary.append(
        f"- T={length}, {mine} vs {name}: {a['fwd']['tokens_per_s'] / b['fwd']['tokens_per_s']:.2f}× (fwd), "
        f"{a['bwd']['tokens_per_s'] / b['bwd']['tokens_per_s']:.2f}× (fwd+bwd) tokens/s; fwd+bwd peak RSS "
        f"{a['bwd']['warm_rss_mib'] / b['bwd']['warm_rss_mib']:.2f}× theirs after one call, "
        f"{a['bwd']['peak_rss_mib'] / b['bwd']['peak_rss_mib']:.2f}× after all calls")
  versions = ""
  if theirs:
    peer = results[theirs[0], int(_LENGTHS.value[0])]["fwd"]
    versions = f"torch {peer.get('torch', '?')}, titans-pytorch {peer.get('titans_pytorch', '?')}"
  body = ("Width 256, 4 heads × 64, chunk 64, 2-layer MLP memory (expansion 4), batch 2, float32; each cell a "
          f"fresh process; medians of {_REPEATS.value} calls after warm-up, then medians over {_TRIALS.value} "
          f"processes per cell run in rounds over the sides. {versions}\n\n" +
          common.markdown_table(["implementation", "semantics", "T", "fwd tok/s", "fwd+bwd tok/s",
                                 "fwd peak RSS MiB", "fwd+bwd peak RSS MiB after 1 call",
                                 "fwd+bwd peak RSS MiB"], rows) + "\n\n" + "\n".join(summary))
  common.report("Peer comparison on CPU: titans-pytorch (benchmarks/peers_cpu.py)", body, _WRITE.value)


if __name__ == "__main__":
  app.run(main)
