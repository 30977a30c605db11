"""PNG plots for evaluation reports: a score heatmap (NIAH depth × length) and score-vs-length lines (BABILong).

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), so nothing changes the
global pyplot backend and no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def _new_figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def save_heatmap(values, row_labels: Sequence, col_labels: Sequence, path: str, *, title: str = "",
                 xlabel: str = "", ylabel: str = "", vmin: float = 0.0, vmax: float = 100.0) -> None:
  """values [R, C] (NaN = no data, drawn grey) → annotated heatmap PNG at ``path``."""
  values = np.asarray(values, dtype=float)
  if values.shape != (len(row_labels), len(col_labels)):
    raise ValueError(f"values has shape {values.shape}; expected ({len(row_labels)}, {len(col_labels)}) "
                     "from row_labels and col_labels.")
  fig = _new_figure(max(4.0, 1.0 + 0.9 * len(col_labels)), max(3.0, 1.2 + 0.28 * len(row_labels)))
  ax = fig.add_subplot(1, 1, 1)
  masked = np.ma.masked_invalid(values)
  import matplotlib

  cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
  image = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
  ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels])
  ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels], fontsize=7 if len(row_labels) > 12 else 9)
  if len(row_labels) * len(col_labels) <= 400:
    for r in range(values.shape[0]):
      for c in range(values.shape[1]):
        if not math.isnan(values[r, c]):
          ax.text(c, r, f"{values[r, c]:.0f}", ha="center", va="center", fontsize=6)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  fig.colorbar(image, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def save_line_plot(x_values: Sequence, series: Mapping[str, Sequence[float]], path: str, *, title: str = "",
                   xlabel: str = "", ylabel: str = "", ylim: tuple[float, float] | None = (0.0, 100.0)) -> None:
  """One line per series over the categorical x axis ``x_values`` (NaN points are skipped) → PNG at ``path``."""
  for name, ys in series.items():
    if len(ys) != len(x_values):
      raise ValueError(f"series {name!r} has {len(ys)} points; expected {len(x_values)} (one per x value).")
  fig = _new_figure(6.0, 4.0)
  ax = fig.add_subplot(1, 1, 1)
  xs = np.arange(len(x_values))
  for name, ys in series.items():
    ax.plot(xs, np.asarray(ys, dtype=float), marker="o", label=name)
  ax.set_xticks(xs, [str(x) for x in x_values])
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  if series:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
