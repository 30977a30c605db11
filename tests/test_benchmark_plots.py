"""Tests of benchmarks/plots.py: RESULTS.md parsing (newest section wins, columns by name) and PNG output."""

import math
import os

import pytest

from benchmarks import plots

_HEADER = """- date: {date}
- machine: Test CPU, 2 cores (CPU)
- allocator: tcmalloc (LD_PRELOAD)
- versions: python 3.11.7, jax 0.10.2
- command: `benchmarks/{kind}.py`
"""


def _section(title: str, kind: str, date: str, body: str) -> str:
  return f"\n## {title} (benchmarks/{kind}.py)\n\n" + _HEADER.format(date=date, kind=kind) + "\n" + body + "\n"


# The layer-scaling section appears three times: the 2026-01-02 one is the newest although it is not last in the
# file. Columns come in a different order from the scripts' and with an extra column ("note").
_LAYERS_OLD = """Old run.

| layer | T | fwd tok/s | fwd+bwd tok/s | fwd+bwd plan GiB |
|---|---|---|---|---|
| memory | 1,024 | 1 | 1 | 1 |
| softmax attention | 1,024 | 2 | 2 | 1 |
"""
_LAYERS_NEW = """Width 256.

| note | T | layer | fwd+bwd tok/s | fwd tok/s | fwd+bwd plan GiB |
|---|---|---|---|---|---|
| a | 1,024 | memory | 1,000 | 4,000 | 0.10 |
| b | 4,096 | memory | 1,000 | 4,000 | 0.40 |
| c | 16,384 | memory | 1,000 | 4,000 | 1.60 |
| d | 1,024 | softmax attention | 4,000 | 16,000 | 0.05 |
| e | 4,096 | softmax attention | 250 | 1,000 | 0.80 |
| f | 16,384 | softmax attention | skipped (memory) | skipped (memory) | 12.80 |
"""
_MEMORY_OP = """B=2.

| Muon | impl | T | fwd s | fwd tok/s | fwd+bwd s | fwd+bwd tok/s | fwd+bwd peak MiB | extra |
|---|---|---|---|---|---|---|---|---|
| off | reference | 256 | 0.1 | 5,000 | 0.9 | 500 | 1,400 | x |
| off | xla | 256 | 0.01 | 30,000 | 0.05 | 10,000 | 40 | x |
| off | xla | 1024 | 0.06 | 33,000 | 0.2 | 9,000 | 95 | x |
| on | reference | 256 | 1.3 | 390 | skipped | skipped | skipped | x |
"""
_PEERS = """Width 256.

| implementation | semantics | T | fwd tok/s | fwd+bwd tok/s | fwd peak RSS MiB | fwd+bwd peak RSS MiB |
|---|---|---|---|---|---|---|
| atlas-jax memory layer | s | 1024 | 33,085 | 7,766 | 453 | 692 |
| titans-pytorch | s | 1024 | 33,193 | 9,427 | 496 | 675 |
| titans-pytorch batch_size=64 | s | 1024 | 16,363 | 5,860 | 440 | 665 |
| atlas-jax memory layer | s | 4096 | 29,965 | 7,554 | 558 | 1,050 |
| titans-pytorch | s | 4096 | 26,980 | 6,045 | 946 | 1,639 |
| titans-pytorch batch_size=64 | s | 4096 | 12,215 | 4,404 | 581 | 1,697 |
"""
_DECODE = """Demo size.

| model | context | ms / token | decode state MiB |
|---|---|---|---|
| atlas | 1,024 | 7.87 | 2.00 |
| atlas | 1,048,576 | 5.02 | 2.00 |
| transformer++ | 1,024 | 0.93 | 2.01 |
| transformer++ | 1,048,576 | — | KV cache 8.0 GiB > --max_cache_gib |
"""
_TRAIN = """Matmul peak: 194 GFLOP/s.

| model | step ms | tokens/s | GFLOP/s (XLA count) | of matmul peak |
|---|---|---|---|---|
| transformer++ | 147 | 13,898 | 44.5 | 22.9% |
| atlas | 1,170 | 1,750 | 23.9 | 12.3% |
"""

RESULTS = ("# Benchmark results\n\nWritten by the benchmark scripts.\n"
           + _section("Layer scaling with T", "layer_scaling", "2025-12-01 10:00 UTC", _LAYERS_OLD)
           + _section("Layer scaling with T", "layer_scaling", "2026-01-02 10:00 UTC", _LAYERS_NEW)
           + _section("Layer scaling with T", "layer_scaling", "2026-01-01 10:00 UTC", _LAYERS_OLD)
           + _section("Memory op: reference vs xla", "memory_op", "2026-01-01 09:00 UTC", _MEMORY_OP)
           + _section("Peer comparison on CPU: titans-pytorch", "peers_cpu", "2026-01-01 09:00 UTC", _PEERS)
           + _section("Decoding vs context length", "decode", "2026-01-01 09:00 UTC", _DECODE)
           + _section("Training throughput per preset", "train_throughput", "2026-01-01 09:00 UTC", _TRAIN)
           + "\n## Notes without a script\n\nfree text\n")


@pytest.mark.parametrize("cell, expected", [("1,234", 1234.0), (" 0.21 ", 0.21), ("22.9%", 22.9), ("3356.80", 3356.8),
                                            ("1,048,576", 1048576.0), ("skipped (memory)", None), ("—", None),
                                            ("n/a", None), ("", None), ("KV cache 8.0 GiB", None)])
def test_parse_number(cell, expected):
  assert plots.parse_number(cell) == expected


def test_sections_meta_and_newest_wins():
  sections = plots.parse_results(RESULTS)
  assert [s.kind for s in sections] == ["layer_scaling"] * 3 + ["memory_op", "peers_cpu", "decode",
                                                                "train_throughput", None]
  latest = plots.latest_sections(sections)
  assert set(latest) == set(plots.PLOTTERS)
  layers = latest["layer_scaling"]
  assert layers.position == 1 and layers.meta["date"] == "2026-01-02 10:00 UTC"
  assert layers.meta["machine"] == "Test CPU, 2 cores (CPU)"
  assert layers.prose == ("Width 256.",)
  assert layers.caption() == "Test CPU, 2 cores (CPU) · 2026-01-02 10:00 UTC"
  # Same date: the later section in the file wins.
  twice = plots.parse_results(_section("A", "decode", "2026-01-01 09:00 UTC", _DECODE)
                              + _section("B", "decode", "2026-01-01 09:00 UTC", _DECODE))
  assert plots.latest_sections(twice)["decode"].title == "B (benchmarks/decode.py)"
  # A newer section from a GPU (gpu_check.sh) does not replace the CPU figure's.
  gpu = _section("G", "decode", "2026-01-03 09:00 UTC", _DECODE).replace("(CPU)", "(gpu)")
  assert plots.latest_sections(twice + plots.parse_results(gpu))["decode"].title == "B (benchmarks/decode.py)"


def test_columns_by_header_name():
  latest = plots.latest_sections(plots.parse_results(RESULTS))
  table = latest["layer_scaling"].table
  assert table.columns[0] == "note" and len(table.rows) == 6
  assert table.column("layer")[3] == "softmax attention"
  assert table.numbers("FWD+BWD  tok/s") == [1000.0, 1000.0, 1000.0, 4000.0, 250.0, None]
  assert table.numbers("fwd+bwd plan GiB")[-1] == 12.8
  with pytest.raises(KeyError, match=r"no column 'tokens/s'.*'fwd tok/s'"):
    table.column("tokens/s")
  decode = latest["decode"].table
  assert decode.numbers("context") == [1024.0, 1048576.0, 1024.0, 1048576.0]
  assert decode.numbers("ms / token")[3] is None
  assert latest["train_throughput"].table.numbers("of matmul peak") == [22.9, 12.3]


def test_crossings_log_log():
  (x, y), = plots.crossings([1, 4], [1, 4], [2, 2])  # log a − log b goes from −log 2 to +log 2
  assert math.isclose(x, 2.0) and math.isclose(y, 2.0)
  assert plots.crossings([1, 4, 16], [1, 2, 3], [5, 6, 7]) == []  # always below
  assert plots.crossings([1, 4], [1, None], [2, 2]) == []  # a gap is no evidence of a crossing
  assert plots.crossings([1, 4], [2, 4], [2, 2]) == []  # touching at the start is not a crossing
  # Synthetic layer table: memory 1000 flat; attention 4000 → 250 over 1K → 4K: equal at T = 2048.
  section = plots.latest_sections(plots.parse_results(RESULTS))["layer_scaling"]
  (x, y), = plots.layer_scaling_crossings(section)["memory"]
  assert math.isclose(x, 2048.0) and math.isclose(y, 1000.0)
  assert plots.crossing_summary(section) == ["memory crosses softmax attention at T≈2,048 (1,000 tok/s)"]


def test_plot_all_writes_pngs(tmp_path):
  paths, latest = plots.plot_all(RESULTS, str(tmp_path / "figs"))
  assert sorted(os.path.basename(p) for p in paths) == sorted(plots.FIGURE_FILES.values())
  assert sorted(latest) == sorted(plots.PLOTTERS)
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 10_000


def test_missing_section_fails_before_drawing(tmp_path, capsys):
  text = RESULTS.replace("(benchmarks/decode.py)", "(no script)")
  with pytest.raises(plots.MissingSectionError, match=r"\['decode'\].*python -m benchmarks\.decode"):
    plots.plot_all(text, str(tmp_path / "figs"))
  assert not (tmp_path / "figs").exists()
  results = tmp_path / "RESULTS.md"
  results.write_text(text, encoding="utf-8")
  assert plots.main([f"--results={results}", f"--out_dir={tmp_path / 'out'}"]) == 1
  assert "no section for ['decode']" in capsys.readouterr().err
  assert plots.main([f"--results={tmp_path / 'absent.md'}"]) == 2


def test_committed_results_have_every_section_and_column():
  """The committed RESULTS.md stays readable: every kind present, with the columns the figures use."""
  with open(plots.RESULTS, encoding="utf-8") as f:
    latest = plots.latest_sections(plots.parse_results(f.read()))
  plots.require(latest, plots.PLOTTERS)
  # A tuple: any one of these names (a column renamed between runs).
  needed = {"layer_scaling": ["layer", "T", "fwd tok/s", "fwd+bwd tok/s", "fwd+bwd plan GiB"],
            "memory_op": ["Muon", "impl", "T", "fwd tok/s", "fwd+bwd tok/s", ("fwd+bwd plan MiB", "fwd+bwd peak MiB")],
            "peers_cpu": ["implementation", "T", "fwd tok/s", "fwd+bwd tok/s", "fwd peak RSS MiB",
                          "fwd+bwd peak RSS MiB"],
            "decode": ["model", "context", "ms / token", "decode state MiB"],
            "train_throughput": ["model", "tokens/s", ("MFU", "of matmul peak")]}
  for kind, columns in needed.items():
    for column in columns:
      latest[kind].table.index(latest[kind].table.pick(*column) if isinstance(column, tuple) else column)


def test_renamed_columns_plot(tmp_path):
  """The scripts' current column names (memory_op's plan, train_throughput's MFU with "n/a" cells) draw too."""
  memory_op = _MEMORY_OP.replace("fwd+bwd peak MiB", "fwd+bwd plan MiB")
  train = """Model FLOPs.

| model | step ms | tokens/s | model GFLOP / step | MFU | XLA-counted FLOP/s, % of matmul | tokens/s, 2 host devices | MFU, 2 host devices |
|---|---|---|---|---|---|---|---|
| transformer++ | 147 | 13,898 | 6.04 | 22.9% | 23.0% | 12,000 | 20.0% |
| atlas | 1,170 | 1,750 | n/a (Muon; dense + attention 6.18) | n/a | 12.3% | 2,500 | n/a |
"""
  text = RESULTS.replace(_MEMORY_OP, memory_op).replace(_TRAIN, train)
  paths, latest = plots.plot_all(text, str(tmp_path / "figs"))
  assert len(paths) == len(plots.FIGURE_FILES)
  assert latest["memory_op"].table.pick("fwd+bwd plan MiB", "fwd+bwd peak MiB") == "fwd+bwd plan MiB"
  assert latest["train_throughput"].table.numbers("MFU") == [22.9, None]
  with pytest.raises(KeyError, match="none of the columns"):
    latest["decode"].table.pick("MFU", "of matmul peak")


def test_layer_lines_split_by_implementation():
  table = plots.Table(("layer", "implementation", "T", "fwd tok/s"),
                      (("delta", "reference", "1,024", "10"), ("delta", "xla", "1,024", "40"),
                       ("softmax attention", "xla", "1,024", "30")), "synthetic")
  assert list(plots._layer_groups(table)) == ["delta [reference]", "delta [xla]", "softmax attention"]
