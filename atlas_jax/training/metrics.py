"""Observability: a progress line (loss, tokens/s, ETA), metrics as JSON lines and TensorBoard events."""

from __future__ import annotations

import json
import os
import sys
import time


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
  """Prints `[####......] step 120/600 | loss 2.31 | 2,900 tok/s | ETA 3m10s` every `every` steps, and the first
  step's time, which includes compiling it. Silent with stream=None (processes other than the first)."""

  def __init__(self, total_steps: int, tokens_per_step: int, every: int, stream=sys.stdout):
    self.total, self.tokens, self.every, self.stream = total_steps, tokens_per_step, every, stream
    self.created, self.start = time.perf_counter(), None

  def update(self, step: int, loss: float, force: bool = False) -> None:
    if self.stream is None:
      return
    if self.start is None:  # the first step includes compilation; time the rest from the end of it
      self.start, self.start_step = time.perf_counter(), step
      self.stream.write(f"step {step}: loss {loss:.4f} (compiling and running it took "
                        f"{self.start - self.created:.1f} s)\n")
      self.stream.flush()
      return
    if not force and step % self.every:
      return
    elapsed = time.perf_counter() - self.start
    done = step - self.start_step
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate else 0.0
    width = 20
    filled = int(width * step / max(self.total, 1))
    bar = "#" * filled + "." * (width - filled)
    self.stream.write(f"[{bar}] step {step}/{self.total} | loss {loss:.4f} | {rate * self.tokens:,.0f} tok/s | "
                      f"ETA {_duration(eta)}\n")
    self.stream.flush()


class MetricWriter:
  """Appends {"step": ..., name: value} lines to workdir/metrics.jsonl and scalars to TensorBoard.

  A run that starts from `start_step` (the restored checkpoint's, 0 for a fresh run) first drops what an earlier
  attempt logged after that step, which this run logs again: rows of metrics.jsonl with a larger step, and (by
  TensorBoard's purge_step) those steps' events. One writer per workdir: rows that a still-running earlier
  attempt appends during the rewrite are lost."""

  def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_rows_after(path, start_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)
    except ImportError:
      print("tensorboardX is not installed: TensorBoard logs are off (metrics.jsonl is still written).")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in metrics.items():
        self._tb.add_scalar(name, float(value), int(step))

  def logged(self, step: int, name: str) -> bool:
    """Whether metrics.jsonl already holds `name` at `step` (a rerun of a finished run evaluates it again)."""
    if not self.enabled:
      return False
    with open(self._jsonl.name, encoding="utf-8") as f:
      return any(_step(line) == step and name in json.loads(line) for line in f)

  def text(self, step: int, name: str, value: str) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_text(name, value, int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites metrics.jsonl without its rows past `step` and a line cut short by a crash (atomically: a crash
  now leaves the old file or the new)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  # A row cut short does not parse (a JSON object ends with its brace); a whole one whose newline was never
  # written gets it back, so that the next row is not appended onto it.
  kept = [line if line.endswith("\n") else line + "\n" for line, row_step in zip(lines, map(_step, lines))
          if row_step is not None and row_step <= step]
  if kept == lines:
    return
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


def _step(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None
