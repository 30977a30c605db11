"""Figures from benchmarks/RESULTS.md: parse its Markdown sections and draw PNGs into benchmarks/figures/.

    python -m benchmarks.plots                                    # every figure from the committed RESULTS.md
    python -m benchmarks.plots --results=/tmp/R.md --out_dir=/tmp/figs

Each benchmark script appends a dated section whose heading names the script, e.g.
``## Layer scaling with T (benchmarks/layer_scaling.py)``, followed by ``- key: value`` lines (date, machine,
allocator, versions, command), prose, and one Markdown table (benchmarks/common.py writes them). A section's kind
is its script's name; when RESULTS.md holds several sections of one kind, the newest (by its ``date`` line, then
by position in the file) wins. The figures are the CPU machine's: sections from a GPU (machine "… (gpu)", written
by ``gpu_check.sh``) are left out; their tables are in RESULTS.md and BENCHMARKS.md. Columns are looked up by
header name, so extra rows and columns are ignored. Cells that are not numbers ("skipped (memory)", "—", "n/a")
are gaps in the plots. Each figure's title names the machine and date of the section it was drawn from. Nothing
here runs a benchmark.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import math
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)

_HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(_HERE, "RESULTS.md")
FIGURES = os.path.join(_HERE, "figures")

# kind (script name) → figure file written for it.
FIGURE_FILES = {
    "layer_scaling": "layer_scaling.png",
    "memory_op": "memory_op.png",
    "peers_cpu": "peers_cpu.png",
    "decode": "decode.png",
    "train_throughput": "train_throughput.png",
}

_KIND = re.compile(r"benchmarks/(\w+)\.py")
_META = re.compile(r"^- (\w+): (.*)$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")


class MissingSectionError(ValueError):
  """RESULTS.md lacks a section that a figure needs."""


def parse_number(cell: str) -> float | None:
  """'1,234.5' → 1234.5, '22.9%' → 22.9; None for cells that are not numbers ('skipped (memory)', '—')."""
  text = cell.strip().replace(",", "").removesuffix("%").strip()
  return float(text) if _NUMBER.match(text) else None


def _normalise(name: str) -> str:
  return " ".join(name.lower().split())


@dataclasses.dataclass(frozen=True)
class Table:
  """One Markdown table: header names and rows of cell strings (rows padded or cut to the header's width)."""
  columns: tuple[str, ...]
  rows: tuple[tuple[str, ...], ...]
  where: str = "table"

  def index(self, name: str) -> int:
    """Position of the column whose header is `name` (case and spacing ignored)."""
    wanted = _normalise(name)
    for i, column in enumerate(self.columns):
      if _normalise(column) == wanted:
        return i
    raise KeyError(f"{self.where}: no column {name!r}; its columns are {list(self.columns)}")

  def has(self, name: str) -> bool:
    return any(_normalise(column) == _normalise(name) for column in self.columns)

  def pick(self, *names: str) -> str:
    """The first of `names` that the table has (a column renamed between runs: the new name first)."""
    for name in names:
      if self.has(name):
        return name
    raise KeyError(f"{self.where}: none of the columns {list(names)}; its columns are {list(self.columns)}")

  def column(self, name: str) -> list[str]:
    i = self.index(name)
    return [row[i] for row in self.rows]

  def numbers(self, name: str) -> list[float | None]:
    return [parse_number(cell) for cell in self.column(name)]


@dataclasses.dataclass(frozen=True)
class Section:
  """One ``## title`` section of RESULTS.md."""
  title: str
  position: int  # order in the file, 0-based
  meta: dict[str, str]  # the "- key: value" lines: date, machine, allocator, versions, command
  prose: tuple[str, ...]  # other non-table lines
  tables: tuple[Table, ...]

  @property
  def kind(self) -> str | None:
    """The benchmark script's name from the title, e.g. 'memory_op'; None when the title names none."""
    match = _KIND.search(self.title)
    return match.group(1) if match else None

  @property
  def date(self) -> datetime.datetime | None:
    try:
      return datetime.datetime.strptime(self.meta.get("date", "").removesuffix(" UTC"), "%Y-%m-%d %H:%M")
    except ValueError:
      return None

  @property
  def table(self) -> Table:
    """The section's first table (each benchmark writes one)."""
    if not self.tables:
      raise ValueError(f"section {self.title!r} has no Markdown table")
    return self.tables[0]

  def caption(self) -> str:
    return f"{self.meta.get('machine', 'machine not recorded')} · {self.meta.get('date', 'undated')}"


def _split_row(line: str) -> list[str]:
  return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _parse_section(title: str, position: int, lines: list[str]) -> Section:
  meta, prose, tables = {}, [], []
  i = 0
  while i < len(lines):
    line = lines[i].strip()
    if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*", lines[i + 1]):
      columns = _split_row(line)
      rows = []
      i += 2
      while i < len(lines) and lines[i].strip().startswith("|"):
        cells = _split_row(lines[i])
        rows.append(tuple((cells + [""] * len(columns))[:len(columns)]))
        i += 1
      tables.append(Table(tuple(columns), tuple(rows), where=f"section {title!r}, table {len(tables) + 1}"))
      continue
    match = _META.match(line)
    if match and not tables and match.group(1) not in meta:
      meta[match.group(1)] = match.group(2).strip()
    elif line:
      prose.append(line)
    i += 1
  return Section(title, position, meta, tuple(prose), tuple(tables))


def parse_results(text: str) -> list[Section]:
  """Every ``## `` section of a RESULTS.md text, in file order."""
  sections, title, lines = [], None, []
  for line in text.splitlines():
    if line.startswith("## "):
      if title is not None:
        sections.append(_parse_section(title, len(sections), lines))
      title, lines = line[3:].strip(), []
    elif title is not None:
      lines.append(line)
  if title is not None:
    sections.append(_parse_section(title, len(sections), lines))
  return sections


def latest_sections(sections: list[Section]) -> dict[str, Section]:
  """kind → the newest CPU section of that kind (latest date; among equal or missing dates, the later one)."""
  latest = {}
  for section in sections:
    kind = section.kind
    if kind is None or section.meta.get("machine", "").endswith("(gpu)"):
      continue
    rank = (section.date or datetime.datetime.min, section.position)
    old = latest.get(kind)
    if old is None or rank >= (old.date or datetime.datetime.min, old.position):
      latest[kind] = section
  return latest


def require(latest: dict[str, Section], kinds, source: str = "RESULTS.md") -> None:
  """Raise MissingSectionError naming every kind in `kinds` that `latest` lacks and how to produce it."""
  missing = [kind for kind in kinds if kind not in latest]
  if missing:
    how = "; ".join(f"'{kind}': run `LD_PRELOAD=libtcmalloc_minimal.so.4 python -m benchmarks.{kind}`"
                    for kind in missing)
    raise MissingSectionError(
        f"{source} has no section for {missing} (a '## ... (benchmarks/<kind>.py)' heading was expected; "
        f"found kinds {sorted(latest)}). To add it: {how}.")


def crossings(xs, a, b) -> list[tuple[float, float]]:
  """Points (x, y) where series a and b cross, interpolated linearly in log-log between measured x's.

  A segment counts only where both series have positive values at both ends and a is above b at one end and
  below at the other (strictly), so a gap or a touch at a measured x is not reported.
  """
  out = []
  for i in range(len(xs) - 1):
    ends = (a[i], b[i], a[i + 1], b[i + 1])
    if any(v is None or v <= 0 for v in ends):
      continue
    d0, d1 = math.log(a[i]) - math.log(b[i]), math.log(a[i + 1]) - math.log(b[i + 1])
    if d0 * d1 >= 0:  # same side at both ends, or equal at a measured x (not a change of sides)
      continue
    f = d0 / (d0 - d1)
    x = math.exp(math.log(xs[i]) + f * (math.log(xs[i + 1]) - math.log(xs[i])))
    y = math.exp(math.log(a[i]) + f * (math.log(a[i + 1]) - math.log(a[i])))
    out.append((x, y))
  return out


def _groups(table: Table, key: str) -> dict[str, list[int]]:
  """Row indices per distinct value of column `key`, in first-seen order."""
  groups = collections.OrderedDict()
  for i, value in enumerate(table.column(key)):
    groups.setdefault(value, []).append(i)
  return groups


def _layer_groups(table: Table) -> dict[str, list[int]]:
  """Layer-scaling rows per line: the layer, with its memory-op implementation when the table has that column
  (attention has one implementation and keeps its plain name)."""
  if "implementation" not in [c.lower() for c in table.columns]:
    return _groups(table, "layer")
  groups = collections.OrderedDict()
  for i, (layer, impl) in enumerate(zip(table.column("layer"), table.column("implementation"))):
    name = layer if "attention" in layer.lower() else f"{layer} [{impl}]"
    groups.setdefault(name, []).append(i)
  return groups


def _series(table: Table, rows: list[int], x: str, y: str):
  """(xs, ys) of the given rows, sorted by x; y is None where the cell is not a number."""
  xs, ys = table.numbers(x), table.numbers(y)
  pairs = sorted(((xs[i], ys[i]) for i in rows if xs[i] is not None), key=lambda p: p[0])
  return [p[0] for p in pairs], [p[1] for p in pairs]


def _plot_line(ax, xs, ys, **style):
  """Plot the numeric points of a series (gaps dropped); returns the line or None when nothing is numeric."""
  points = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
  if not points:
    return None
  return ax.plot([p[0] for p in points], [p[1] for p in points], **style)[0]


def _finish(fig, section: Section, title: str, path: str) -> str:
  fig.suptitle(f"{title}\n{section.caption()}", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _loglog(ax, xlabel: str, ylabel: str) -> None:
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, which="both", alpha=0.3)


def layer_scaling_crossings(section: Section, column: str = "fwd+bwd tok/s") -> dict[str, list[tuple[float, float]]]:
  """layer → points where its `column` line crosses the attention line (layers named '... attention')."""
  table = section.table
  groups = _layer_groups(table)
  attention = [name for name in groups if "attention" in name.lower()]
  if not attention:
    return {}
  ax_, ay = _series(table, groups[attention[0]], "T", column)
  out = {}
  for name, rows in groups.items():
    if name == attention[0]:
      continue
    xs, ys = _series(table, rows, "T", column)
    shared = sorted(set(xs) & set(ax_))
    out[name] = crossings(shared, [ys[xs.index(x)] for x in shared], [ay[ax_.index(x)] for x in shared])
  return out


def crossing_summary(section: Section, column: str = "fwd+bwd tok/s") -> list[str]:
  """One line per memory layer: where its `column` crosses attention's, or which side it stays on."""
  table = section.table
  groups = _layer_groups(table)
  attention = next((name for name in groups if "attention" in name.lower()), None)
  if attention is None:
    return []
  at = dict(zip(*_series(table, groups[attention], "T", column)))
  lines = []
  for name, points in layer_scaling_crossings(section, column).items():
    mine = dict(zip(*_series(table, groups[name], "T", column)))
    shared = [t for t in sorted(mine) if mine[t] and at.get(t)]
    if points:
      where = ", ".join(f"T≈{x:,.0f} ({y:,.0f} tok/s)" for x, y in points)
      lines.append(f"{name} crosses {attention} at {where}")
    elif shared:
      side = "faster" if mine[shared[0]] > at[shared[0]] else "slower"
      lines.append(f"{name} is {side} than {attention} at every T measured for both "
                   f"({shared[0]:,.0f}–{shared[-1]:,.0f})")
  return lines


def plot_layer_scaling(section: Section, out_dir: str) -> str:
  """Forward, forward+backward tokens/s and XLA's memory plan vs T, log-log, one line per token mixer."""
  table = section.table
  groups = _layer_groups(table)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
  panels = (("fwd tok/s", "forward tokens/s"), ("fwd+bwd tok/s", "forward+backward tokens/s"))
  for ax, (column, label) in zip(axes, panels):
    for j, (name, rows) in enumerate(groups.items()):
      _plot_line(ax, *_series(table, rows, "T", column), marker="o", color=f"C{j}", label=name)
    for name, points in layer_scaling_crossings(section, column).items():
      for x, y in points:
        ax.plot([x], [y], marker="x", color="black", markersize=9, zorder=5)
        ax.annotate(f"T≈{x:,.0f}", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    _loglog(ax, "T (tokens)", label)
  ax = axes[2]
  lengths, plans, timed = table.numbers("T"), table.numbers("fwd+bwd plan GiB"), table.numbers("fwd+bwd tok/s")
  for j, (name, rows) in enumerate(groups.items()):
    _plot_line(ax, *_series(table, rows, "T", "fwd+bwd plan GiB"), marker="o", color=f"C{j}", label=name)
    skipped = [(lengths[i], plans[i]) for i in rows if timed[i] is None and plans[i] is not None]
    if skipped:
      ax.plot(*zip(*skipped), linestyle="none", marker="o", markerfacecolor="white", color=f"C{j}", markersize=9)
  _loglog(ax, "T (tokens)", "forward+backward XLA memory plan (GiB)")
  ax.text(0.02, 0.98, "hollow: not run (plan too large)", transform=ax.transAxes, va="top", fontsize=8)
  ax.legend(fontsize=8, loc="lower right")
  return _finish(fig, section, "Token mixers vs sequence length (x: crossing with attention, log-log interpolated)",
                 os.path.join(out_dir, FIGURE_FILES["layer_scaling"]))


def plot_memory_op(section: Section, out_dir: str) -> str:
  """Memory op tokens/s and XLA memory plan vs T: reference (dashed) vs xla (solid), one colour per Muon mode."""
  table = section.table
  muons = list(_groups(table, "Muon"))
  keys = collections.OrderedDict()
  for i, (muon, impl) in enumerate(zip(table.column("Muon"), table.column("impl"))):
    keys.setdefault((muon, impl), []).append(i)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
  plan = table.pick("fwd+bwd plan MiB", "fwd+bwd peak MiB")  # earlier sections: "peak", the same plan
  panels = (("fwd tok/s", "forward tokens/s"), ("fwd+bwd tok/s", "forward+backward tokens/s"),
            (plan, "forward+backward XLA memory plan (MiB)"))
  for ax, (column, label) in zip(axes, panels):
    for (muon, impl), rows in keys.items():
      style = dict(color=f"C{muons.index(muon)}", linestyle={"reference": "--", "xla": "-"}.get(impl, ":"),
                   marker="o" if impl == "reference" else "s", label=f"Muon {muon}, {impl}")
      _plot_line(ax, *_series(table, rows, "T", column), **style)
    _loglog(ax, "T (tokens)", label)
  axes[0].legend(fontsize=8)
  return _finish(fig, section, "Memory op: per-token reference vs chunked xla",
                 os.path.join(out_dir, FIGURE_FILES["memory_op"]))


def _bars(ax, table: Table, column: str, label: str, goal=None) -> None:
  """Grouped bars: one group per T, one bar per implementation; `goal(T) -> value` draws a dashed target."""
  impls = list(_groups(table, "implementation"))
  lengths = sorted({t for t in table.numbers("T") if t is not None})
  values = {(impl, t): v for impl, t, v in zip(table.column("implementation"), table.numbers("T"),
                                               table.numbers(column))}
  width = 0.8 / max(len(impls), 1)
  for j, impl in enumerate(impls):
    heights = [values.get((impl, t)) or 0.0 for t in lengths]
    bars = ax.bar([g + (j - (len(impls) - 1) / 2) * width for g in range(len(lengths))], heights, width,
                  color=f"C{j}", label=impl)
    ax.bar_label(bars, labels=[f"{h:,.0f}" for h in heights], fontsize=7)
  if goal is not None:
    for g, t in enumerate(lengths):
      target = goal(t, values)
      if target is not None:
        ax.hlines(target, g - 0.45, g + 0.45, colors="black", linestyles="dashed",
                  label="goal (issue)" if g == 0 else None)
  ax.set_xticks(range(len(lengths)), [f"T = {t:,.0f}" for t in lengths])
  ax.set_ylabel(label)
  ax.grid(True, axis="y", alpha=0.3)


def _peer_names(table: Table) -> tuple[str | None, str | None]:
  """(titans-pytorch default mode, titans-pytorch re-anchored mode) implementation names, if present."""
  names = list(_groups(table, "implementation"))
  default = next((n for n in names if n.startswith("titans") and "batch_size" not in n), None)
  anchored = next((n for n in names if n.startswith("titans") and "batch_size" in n), None)
  return default, anchored


def plot_peers(section: Section, out_dir: str) -> str:
  """Ours vs titans-pytorch (both modes): tokens/s and peak RSS bars per T, with the issue's goals dashed."""
  table = section.table
  default, anchored = _peer_names(table)

  def speed_goal(t, values):  # ≥ 3× the re-anchored mode and ≥ 2× the default mode
    targets = [f * values[n, t] for f, n in ((3, anchored), (2, default)) if n and values.get((n, t))]
    return max(targets) if targets else None

  def memory_goal(t, values):  # ≤ ½ of its peak memory (the smaller of its two modes), stated at T = 4096
    theirs = [values[n, t] for n in (default, anchored) if n and values.get((n, t))]
    return 0.5 * min(theirs) if theirs and t == 4096 else None

  fig, axes = plt.subplots(2, 2, figsize=(14, 8.5))
  _bars(axes[0, 0], table, "fwd tok/s", "forward tokens/s")
  _bars(axes[0, 1], table, "fwd+bwd tok/s", "forward+backward tokens/s", goal=speed_goal)
  _bars(axes[1, 0], table, "fwd peak RSS MiB", "forward peak RSS (MiB)")
  _bars(axes[1, 1], table, "fwd+bwd peak RSS MiB", "forward+backward peak RSS (MiB)", goal=memory_goal)
  axes[0, 1].set_ylim(top=axes[0, 1].get_ylim()[1] * 1.9)  # room for the legend above the bars
  axes[0, 1].legend(fontsize=7, loc="upper left")
  return _finish(fig, section, "Memory layer vs titans-pytorch NeuralMemory on CPU (matched config)",
                 os.path.join(out_dir, FIGURE_FILES["peers_cpu"]))


def plot_decode(section: Section, out_dir: str) -> str:
  """Per-token decode latency and decode-state size vs context length, one line per model."""
  table = section.table
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  for ax, (column, label) in zip(axes, (("ms / token", "ms per decoded token"),
                                        ("decode state MiB", "decode state (MiB)"))):
    for j, (name, rows) in enumerate(_groups(table, "model").items()):
      _plot_line(ax, *_series(table, rows, "context", column), marker="o", color=f"C{j}", label=name)
    _loglog(ax, "context length (tokens)", label)
  axes[0].legend(fontsize=8)
  return _finish(fig, section, "Decoding vs context length", os.path.join(out_dir, FIGURE_FILES["decode"]))


def plot_train_throughput(section: Section, out_dir: str) -> str:
  """Training tokens/s and model-FLOP utilisation (earlier sections: XLA's FLOP count) as a share of the
  measured matmul rate, per preset (horizontal bars, table order; "n/a" where the model FLOPs are not counted);
  where the table has them, a second bar per preset for the step on several host devices."""
  table = section.table
  names = table.column("model")
  split = next((c[len("tokens/s, "):] for c in table.columns if c.startswith("tokens/s, ")), None)
  share = ("MFU", "model-FLOP utilisation, % of matmul rate") if table.has("MFU") else (
      "of matmul peak", "XLA-counted FLOP rate, % of matmul peak")
  fig, axes = plt.subplots(1, 2, figsize=(13, (0.6 if split else 0.35) * len(names) + 2))
  for ax, (column, label) in zip(axes, (("tokens/s", "training tokens/s"), share)):
    series = [(column, "one device")] + ([(f"{column}, {split}", split)] if split else [])
    height = 0.8 / len(series)
    for j, (name, legend) in enumerate(series):
      numbers = table.numbers(name)
      values = [v or 0.0 for v in numbers]
      offset = (j - (len(series) - 1) / 2) * height
      bars = ax.barh([i + offset for i in range(len(names))], values, height, color=f"C{j}", label=legend)
      ax.bar_label(bars, labels=["n/a" if n is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
                                 for n, v in zip(numbers, values)], fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.margins(x=0.12)
    ax.grid(True, axis="x", alpha=0.3)
  if split:
    axes[0].legend(fontsize=8, loc="lower right")
  return _finish(fig, section, "Training throughput per preset (full step: forward, backward, AdamW)",
                 os.path.join(out_dir, FIGURE_FILES["train_throughput"]))


PLOTTERS = {
    "layer_scaling": plot_layer_scaling,
    "memory_op": plot_memory_op,
    "peers_cpu": plot_peers,
    "decode": plot_decode,
    "train_throughput": plot_train_throughput,
}


def plot_all(text: str, out_dir: str, source: str = "RESULTS.md") -> tuple[list[str], dict[str, Section]]:
  """Draws every figure from a RESULTS.md text into out_dir; raises MissingSectionError before drawing any.
  Returns the PNG paths and the newest section of each benchmark."""
  latest = latest_sections(parse_results(text))
  require(latest, PLOTTERS, source)
  return [plot(latest[kind], out_dir) for kind, plot in PLOTTERS.items()], latest


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results", default=RESULTS, help="RESULTS.md to read")
  parser.add_argument("--out_dir", default=FIGURES, help="folder for the PNGs")
  args = parser.parse_args(argv)
  if not os.path.exists(args.results):
    print(f"error: --results={args.results!r} does not exist", file=sys.stderr)
    return 2
  with open(args.results, encoding="utf-8") as f:
    text = f.read()
  try:
    paths, latest = plot_all(text, args.out_dir, source=args.results)
  except (MissingSectionError, KeyError, ValueError) as e:
    print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 1
  for path in paths:
    print(f"wrote {os.path.relpath(path)}")
  for column in ("fwd tok/s", "fwd+bwd tok/s"):
    for line in crossing_summary(latest["layer_scaling"], column):
      print(f"layer_scaling {column}: {line}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
