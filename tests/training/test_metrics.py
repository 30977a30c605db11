"""metrics.jsonl after a resume: the rows an earlier attempt wrote past the restored step are dropped."""

from __future__ import annotations

import io
import json

from atlas_jax.training.metrics import MetricWriter, Progress


def _steps(workdir) -> list[int]:
  return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_drops_rows_past_its_checkpoint(tmp_path):
  first = MetricWriter(str(tmp_path))
  for step in range(1, 6):
    first.write(step, {"train/loss": 1.0 / step})
  first.close()
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 6, "train/lo')  # a crash mid-line
  resumed = MetricWriter(str(tmp_path), start_step=3)  # the checkpoint it restored is step 3
  for step in range(4, 7):
    resumed.write(step, {"train/loss": 0.5})
  resumed.close()
  assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6]
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 7, "train/loss": 0.5}')  # whole, but its newline was never written
  MetricWriter(str(tmp_path), start_step=7).close()
  assert _steps(tmp_path) == [1, 2, 3, 4, 5, 6, 7] and (tmp_path / "metrics.jsonl").read_text().endswith("}\n")
  MetricWriter(str(tmp_path)).close()  # a fresh start (no checkpoint) keeps nothing
  assert _steps(tmp_path) == []


def test_progress_reports_the_first_step_then_every_few_and_is_silent_elsewhere(capsys):
  out = io.StringIO()
  progress = Progress(total_steps=10, tokens_per_step=100, every=4, stream=out)
  for step in range(1, 11):
    progress.update(step, loss=2.0 / step, force=step == 10)
  lines = out.getvalue().splitlines()
  assert lines[0].startswith("step 1: loss 2.0000 (compiling and running it took ")
  assert [line.split(" | ")[0].split("] ")[1] for line in lines[1:]] == ["step 4/10", "step 8/10", "step 10/10"]
  capsys.readouterr()
  silent = Progress(total_steps=10, tokens_per_step=100, every=1, stream=None)  # other processes
  for step in range(1, 4):
    silent.update(step, loss=1.0)
  assert capsys.readouterr() == ("", "")
