"""Shared benchmark plumbing: timing, compiled-memory figures, machine description, RESULTS.md output.

Sections go to benchmarks/RESULTS.md, or to the file named by the environment variable ``ATLAS_BENCH_RESULTS``
when it is set (smoke runs: ``ATLAS_BENCH_RESULTS=/tmp/R.md python -m benchmarks.decode --contexts=1024``), so
that trial runs leave the record alone. ``--nowrite`` (every script) only prints.

RESULTS.md is only ever appended to, by these scripts; nobody edits its text. GPU sections are appended on the
device machine, which runs on a copy of the working tree: ``benchmarks/gpu_check.sh`` writes the sections its
run appended to LOG_DIR/RESULTS.new.md, and that file is then appended, unchanged, to the local
benchmarks/RESULTS.md (``cat LOG_DIR/RESULTS.new.md >> benchmarks/RESULTS.md``; BENCHMARKS.md, "Reproduce").
That append is the one step done by hand.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from atlas_jax.markdown import markdown_table  # noqa: F401 - the benchmarks' table writer

RESULTS = os.path.join(os.path.dirname(__file__), "RESULTS.md")
RESULTS_ENV = "ATLAS_BENCH_RESULTS"  # environment variable: append sections to this file instead of RESULTS
# Environment variables that change what a benchmark measures; the command line records those that are set.
COMMAND_ENV = ("LD_PRELOAD", "XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES",
               "XLA_PYTHON_CLIENT_PREALLOCATE")
_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "optax")  # versions recorded when installed (and jax's CUDA plugin)


def results_path() -> str:
  """Where sections are appended: $ATLAS_BENCH_RESULTS when set, else benchmarks/RESULTS.md."""
  return os.environ.get(RESULTS_ENV) or RESULTS


class NonFiniteError(RuntimeError):
  """A benchmarked call returned NaN or ±inf."""


def check_finite(what: str, tree) -> None:
  """Raises if a benchmarked call returned NaN or ±inf anywhere: a timing of a diverged computation is no result."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if not bool(jnp.all(jnp.isfinite(leaf))):
      raise NonFiniteError(f"{what}: non-finite values in the output{jax.tree_util.keystr(path)}.")


def time_call(fn, *args, repeats: int = 5) -> float:
  """Median wall time (seconds) of fn(*args) after one warm-up call (compilation excluded), whose output must be
  finite."""
  check_finite(getattr(fn, "__name__", "benchmarked call"), jax.block_until_ready(fn(*args)))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def plan_bytes(compiled) -> int | None:
  """XLA's static memory plan of a compiled call: arguments + outputs + temporaries − donated (aliased) buffers
  (bytes), if the backend reports it."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # some backends do not report it
    return None
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
             - stats.alias_size_in_bytes)


def compiled_peak_bytes(jitted, *args) -> int | None:
  """XLA's static memory plan of a jitted call (``plan_bytes``), if reported."""
  return plan_bytes(jitted.lower(*args).compile())


def resident_mib() -> float | None:
  """The process's resident memory now (not its peak), from /proc/self/statm; None off Linux."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError):
    return None


def allocator() -> str:
  preload = os.environ.get("LD_PRELOAD", "")
  return "tcmalloc (LD_PRELOAD)" if "tcmalloc" in preload else "glibc malloc (no tcmalloc preloaded)"


def machine() -> str:
  """CPU model and core count, or the accelerator's name."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    return f"{device.device_kind} ({device.platform})"
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{model}, {os.cpu_count()} cores (CPU)"


def versions() -> str:
  """'python X, jax X, jaxlib X, flax X, numpy X, optax X' for the packages installed (and jax's CUDA plugin)."""
  out = [f"python {platform.python_version()}"]
  names = _PACKAGES + tuple(sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                                   if (d.metadata["Name"] or "").lower().startswith("jax-cuda")))
  for name in dict.fromkeys(names):
    try:
      out.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      if name == "jax":  # run from a source tree without package metadata
        out.append(f"jax {jax.__version__}")
  return ", ".join(out)


def command() -> str:
  """The command as typed: the set COMMAND_ENV variables, then the interpreter's own argv (``python -m
  benchmarks.x --flag``, from sys.orig_argv) or, before Python 3.10, the script and its arguments."""
  argv = list(getattr(sys, "orig_argv", None) or [os.path.relpath(sys.argv[0])] + sys.argv[1:])
  env = [f"{name}={os.environ[name]}" for name in COMMAND_ENV if os.environ.get(name)]
  return " ".join(shlex.quote(a) for a in env + argv)


def header() -> list[str]:
  return [
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
      f"- machine: {machine()}",
      f"- allocator: {allocator()}",
      f"- versions: {versions()}",
      f"- command: `{command()}`",
  ]


def append_results(title: str, body: str) -> str:
  """Append one dated section to results_path(); returns that path.

  Only appends: earlier sections are the record of earlier runs. GPU sections are appended on the device and
  merged into the local file afterwards (module docstring)."""
  path = results_path()
  new = not os.path.exists(path)
  with open(path, "a", encoding="utf-8") as f:
    if new:
      f.write("# Benchmark results\n\nAppended by the benchmark scripts (GPU sections on the device, merged back "
              "by appending them); earlier sections are never edited.\n")
    f.write(f"\n## {title}\n\n" + "\n".join(header()) + "\n\n" + body + "\n")
  return path


def report(title: str, body: str, write: bool) -> None:
  """Print the table with the machine header; append it to results_path() when `write`."""
  print("\n" + "\n".join(header()) + "\n\n" + body)
  if write:
    print(f"appended to {append_results(title, body)}")
