"""Shared benchmark plumbing: timing, compiled-memory figures, machine description, RESULTS.md output."""

from __future__ import annotations

import datetime
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


def compiled_peak_bytes(jitted, *args) -> int | None:
  """XLA's static memory plan of a jitted call: arguments + outputs + temporaries (bytes), if reported."""
  try:
    stats = jitted.lower(*args).compile().memory_analysis()
  except Exception:  # some backends do not report it
    return None
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
             - stats.alias_size_in_bytes)


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


def header() -> list[str]:
  return [
      f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
      f"- machine: {machine()}",
      f"- allocator: {allocator()}",
      f"- versions: python {platform.python_version()}, jax {jax.__version__}",
      f"- command: `{' '.join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])}`",
  ]


def append_results(title: str, body: str) -> None:
  """Append one dated section to benchmarks/RESULTS.md."""
  new = not os.path.exists(RESULTS)
  with open(RESULTS, "a", encoding="utf-8") as f:
    if new:
      f.write("# Benchmark results\n\nWritten by the benchmark scripts; never edited by hand.\n")
    f.write(f"\n## {title}\n\n" + "\n".join(header()) + "\n\n" + body + "\n")


def report(title: str, body: str, write: bool) -> None:
  """Print the table with the machine header; append it to RESULTS.md when `write`."""
  print("\n" + "\n".join(header()) + "\n\n" + body)
  if write:
    append_results(title, body)
