"""Markdown tables for the reports that evaluations and benchmarks write."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A GitHub-flavoured Markdown table: a header row, then one line per row (cells formatted with str)."""
  lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
  return "\n".join(lines)
