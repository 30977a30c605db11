"""BABILong-style evaluation: bAbI facts hidden in long background prose, the label-set metric, and a runner.

Implements EVALS_NOTES.md §3.2 and §3.5 (own code, written from that description of ``booydar/babilong``):

* :func:`hide_facts` — the noise-injection recipe of ``babilong_utils.py``: facts tokenized with a leading
  space; background sentences (leading space, < 10 tokens skipped) appended until the background budget is
  met, the last one cut at token level so facts + background is **exactly** the budget; one gap between
  background sentences drawn per fact uniformly with replacement, sorted, so facts keep their order (several
  facts at one gap go together before that gap's sentence). Length 0 means facts only.
* Background prose is the KJV (:mod:`atlas_jax.evals.prose`, cycling from a random offset per sample) instead
  of PG-19; lengths count **our** tokenizer's tokens, not GPT-2's. Length ``L`` leaves ``prompt_reserve``
  tokens (BABILong: 300) for the question and answer, so the hidden text has ``L - prompt_reserve`` tokens.
* :func:`label_match` — the metric of ``metrics.py`` as EVALS_NOTES.md §3.5 describes it: lowercase, keep the
  text before the first ``.``, cut at ``<context>``, ``<example>`` and ``question``; collect the task's label
  words present, drop those that also appear in the question; correct iff the target is the only one left.
  (The official code lowercases before it cuts at ``Question``, so its cut never applies: an output that goes
  on ``"\nQuestion: ... Answer: garden"`` counts garden there and not here.) :func:`exact_match`
  is the fine-tuning protocol's metric (first line of the output, stripped of spaces and a final ``.``,
  compared case-insensitively).
* Prompt for a base (non-chat) model: ``"{context}\\n\\nQuestion: {question}\\nAnswer:"``, greedy, at most 20
  new tokens (:func:`make_prompt`). No instruction or worked examples (those are for chat models).
* :func:`load_babilong_file` reads real BABILong rows (``input``/``question``/``target``) from JSON, JSONL or
  Parquet files a user has locally (e.g. downloaded from the HF dataset ``RMT-team/babilong``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from atlas_jax.evals import babi, plots, prose
from atlas_jax.markdown import markdown_table

LABELS = {
    "qa1": babi.LOCATIONS, "qa2": babi.LOCATIONS, "qa3": babi.LOCATIONS, "qa4": babi.LOCATIONS,
    "qa5": babi.ACTORS_QA5 + babi.OBJECTS,
}
PROMPT_RESERVE = 300
MAX_NEW_TOKENS = 20
MIN_SENTENCE_TOKENS = 10


@dataclasses.dataclass(frozen=True)
class BabilongSample:
  """One BABILong question: ``input`` is the facts hidden in background text."""

  task: str
  length: int | str  # target length in tokens (generated) or the file's length label (loaded)
  index: int
  input: str
  question: str
  target: str
  facts: tuple[str, ...] = ()
  supporting: tuple[int, ...] = ()  # indices into ``facts``
  num_tokens: int | None = None  # tokens of the facts + background stream (None for loaded rows)

  @property
  def prompt(self) -> str:
    return make_prompt(self.input, self.question)


def make_prompt(context: str, question: str) -> str:
  """The base-model prompt: context, a blank line, ``Question: ...`` and ``Answer:``."""
  return f"{context.strip()}\n\nQuestion: {question.strip()}\nAnswer:"


# ----------------------------------------------------------------------------------------- hiding


def _background(budget: int, tokenizer, sentences: Iterable[str], min_tokens: int) -> list[tuple[str, int]]:
  """(text, token count) pieces, each with a leading space, totalling exactly ``budget`` tokens."""
  pieces, total = [], 0
  for sentence in sentences:
    if total == budget:
      break
    tokens = tokenizer.encode(" " + sentence)
    if len(tokens) < min_tokens:
      continue
    if total + len(tokens) <= budget:
      pieces.append((" " + sentence, len(tokens)))
      total += len(tokens)
    else:  # cut the last sentence at token level to hit the budget exactly
      keep = budget - total
      text = tokenizer.decode(tokens[:keep])
      pieces.append((text if text[:1].isspace() else " " + text, keep))
      total = budget
  return pieces


def hide_facts(facts: Sequence[str], num_tokens: int, tokenizer, seed: int | np.random.Generator = 42,
               sentences: Iterable[str] | None = None, min_sentence_tokens: int = MIN_SENTENCE_TOKENS
               ) -> tuple[str, int]:
  """Hides ``facts`` (in order) in background prose; returns (text, tokens in the stream).

  Args:
    facts: the statements, each placed whole with a leading space.
    num_tokens: the exact token count of facts + background; 0 gives the facts alone.
    tokenizer: anything with ``encode``/``decode``.
    seed: int seed or ``numpy.random.Generator`` for the gap positions (and the background start offset
      when ``sentences`` is None).
    sentences: background sentences (default: :class:`prose.SentenceSampler` over the KJV, endless).
    min_sentence_tokens: shorter background sentences are skipped (BABILong: 10).
  """
  rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
  fact_pieces = [(" " + f, len(tokenizer.encode(" " + f))) for f in facts]
  fact_tokens = sum(n for _, n in fact_pieces)
  if num_tokens == 0:
    return "".join(t for t, _ in fact_pieces), fact_tokens
  if num_tokens < fact_tokens:
    raise ValueError(f"num_tokens={num_tokens} is smaller than the facts' {fact_tokens} tokens.")
  if sentences is None:
    sentences = prose.SentenceSampler(rng)
  background = _background(num_tokens - fact_tokens, tokenizer, sentences, min_sentence_tokens)
  if sum(n for _, n in background) != num_tokens - fact_tokens:
    raise ValueError("the background sentences ran out before the budget was met.")
  gaps = np.sort(rng.integers(0, len(background) + 1, size=len(fact_pieces)))
  out, f = [], 0
  for gap in range(len(background) + 1):
    while f < len(fact_pieces) and gaps[f] == gap:
      out.append(fact_pieces[f][0])
      f += 1
    if gap < len(background):
      out.append(background[gap][0])
  return "".join(out), num_tokens


def make_babilong_samples(task: str, length: int, num_samples: int, tokenizer, seed: int = 42,
                          prompt_reserve: int = PROMPT_RESERVE, log: Callable[[str], None] | None = None,
                          fit_length: int | None = None) -> Iterator[BabilongSample]:
  """Lazily yields ``num_samples`` generated BABILong samples of ``length`` tokens (0 = facts only).

  Samples whose facts alone exceed ``fit_length - prompt_reserve`` tokens are skipped (reported through
  ``log``); ``fit_length`` defaults to ``length`` and may not exceed it. Calls with the same ``fit_length`` ask
  the same questions (sample ``i`` is the same bAbI story) at every length: ``run_babilong`` passes its
  shortest length, so that accuracy against length does not mix in easier questions at short lengths.
  """
  if task not in LABELS:
    raise ValueError(f"unknown BABILong task {task!r}; expected one of {sorted(LABELS)}.")
  fit_length = length if fit_length is None else fit_length
  for name, value in (("length", length), ("fit_length", fit_length)):
    if value < 0 or (value > 0 and value <= prompt_reserve):
      raise ValueError(f"{name} must be 0 (facts only) or exceed prompt_reserve={prompt_reserve}; got {value}.")
  if length and not 0 < fit_length <= length:
    raise ValueError(f"fit_length={fit_length} must be in (0, length={length}]: the facts must fit the length.")
  budget = length - prompt_reserve if length else 0
  fit_budget = fit_length - prompt_reserve if fit_length else 0
  skipped = 0
  made = 0
  for index, sample in enumerate(babi.make_babi_samples(task, num_samples=10 ** 9, seed=seed)):
    if made == num_samples:
      break
    if fit_budget and sum(len(tokenizer.encode(" " + f)) for f in sample.facts) > fit_budget:
      skipped += 1
      if skipped > 100 * max(1, num_samples):
        raise ValueError(f"length={fit_length} is too short for {task}: almost no sample's facts fit in "
                         f"{fit_budget} tokens.")
      continue
    rng = np.random.default_rng([seed, length, index])
    text, count = hide_facts(sample.facts, budget, tokenizer, seed=rng)
    yield BabilongSample(task, length, index, text, sample.question, sample.answer, sample.facts,
                         sample.supporting, count)
    made += 1
  if skipped and log is not None:
    log(f"BABILong {task} length {length}: skipped {skipped} samples whose facts exceed {fit_budget} tokens")


# ----------------------------------------------------------------------------------------- loading


def _rows_from_json(path: str, task: str | None) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if isinstance(data, dict) and task is not None and task in data:
    data = data[task]  # {split: rows}
  elif isinstance(data, dict) and "data" in data:
    data = data["data"]
  if isinstance(data, dict) and "input" in data and isinstance(data["input"], list):  # column-oriented
    data = [dict(zip(data, values)) for values in zip(*data.values())]
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a list of rows, a {{split: rows}} dict with split {task!r}, or columns; "
                     f"got a {type(data).__name__} with keys {sorted(data)[:10] if isinstance(data, dict) else ''}.")
  return data


def _rows_from_parquet(path: str) -> list[dict]:
  try:
    import pyarrow.parquet as pq
  except ImportError:
    pq = None
  if pq is not None:
    return pq.read_table(path).to_pylist()
  try:
    import datasets
  except ImportError as e:
    raise ImportError("reading Parquet needs pyarrow or datasets: pip install pyarrow") from e
  return list(datasets.Dataset.from_parquet(path))


def load_babilong_file(path: str, task: str, length: int | str = "", split: str | None = None
                       ) -> list[BabilongSample]:
  """Real BABILong rows (``input``, ``question``, ``target``) from a local .json, .jsonl or .parquet file.

  A .json file may hold a list of rows, ``{split: rows}`` (``split`` defaults to ``task``) or columns.
  """
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f if line.strip()]
  elif path.endswith(".json"):
    rows = _rows_from_json(path, split or task)
  elif path.endswith(".parquet"):
    rows = _rows_from_parquet(path)
  else:
    raise ValueError(f"unsupported BABILong file {path!r}; expected .json, .jsonl or .parquet.")
  samples = []
  for i, row in enumerate(rows):
    missing = [k for k in ("input", "question", "target") if k not in row]
    if missing:
      raise ValueError(f"{path}: row {i} lacks {missing}; it has {sorted(row)}.")
    samples.append(BabilongSample(task, length, i, row["input"], row["question"], str(row["target"])))
  return samples


# ----------------------------------------------------------------------------------------- metrics


def preprocess_output(output: str) -> str:
  """BABILong's clean-up: lowercase, first sentence, cut at ``<context>``, ``<example>``, ``question``."""
  output = output.lower().split(".")[0]
  for stop in ("<context>", "<example>", "question"):
    output = output.split(stop)[0]
  return output


def label_match(output: str, target: str, question: str, task: str | None = None,
                labels: Sequence[str] | None = None) -> bool:
  """BABILong's label-set rule: the target must be the only task label in the output (question labels dropped)."""
  if labels is None:
    if task not in LABELS:
      raise ValueError(f"no label set for task {task!r}; pass labels= or one of {sorted(LABELS)}.")
    labels = LABELS[task]
  output = preprocess_output(output)
  target = target.lower().strip()
  labels = {label.lower() for label in labels}
  found = {label for label in labels if label in output} - {label for label in labels if label in question.lower()}
  if "," in target and len(target) > 3:  # several targets (qa8): exactly that set
    wanted = {t.strip() for t in target.split(",")}
    return found == wanted
  return found == {target}


def exact_match(output: str, target: str) -> bool:
  """First line of the output, stripped of spaces and a final period, equals the target (case-insensitive)."""
  first = output.strip().split("\n")[0].strip().rstrip(".").strip()
  return first.lower() == target.strip().lower()


# ----------------------------------------------------------------------------------------- runner


def run_babilong(generate_fn: Callable[[str, int], str], tokenizer, tasks: Sequence[str] = babi.TASKS,
                 lengths: Sequence[int | str] = (0, 1024, 2048, 4096), num_samples: int = 100, out_dir: str = ".",
                 log: Callable[[str], None] = print, *, seed: int = 42, prompt_reserve: int = PROMPT_RESERVE,
                 max_new_tokens: int = MAX_NEW_TOKENS,
                 data_files: Mapping[tuple[str, int | str], str] | None = None) -> dict:
  """Accuracy of ``generate_fn`` per task and length; writes ``babilong.json``, ``.md`` and an accuracy plot.

  ``generate_fn(prompt_text, max_new_tokens)`` returns the greedy continuation. Samples are generated
  (:func:`make_babilong_samples`) for every task × length (lengths in tokens), and read from real BABILong files
  for every ``data_files[(task, length)]`` (first ``num_samples`` rows; length may be a label such as "4k");
  cells with neither stay empty (—). Returns the summary (the JSON without per-sample records).
  """
  os.makedirs(out_dir, exist_ok=True)
  data_files = dict(data_files or {})
  for length in lengths:
    if isinstance(length, str):
      raise ValueError(f"length {length!r} is a label; generated lengths must be ints (tokens). Name real "
                       "BABILong files in data_files={(task, label): path} instead.")
  # Generated cells: tasks × lengths; file cells: each data_files entry (other cells of a file's length: —).
  all_lengths = list(lengths) + [L for L in dict.fromkeys(L for _, L in data_files) if L not in lengths]
  fit_length = min((L for L in lengths if L), default=None)  # every length asks the questions that fit here
  records, label_acc, exact_acc = [], {}, {}
  for task in tasks:
    for length in all_lengths:
      if (task, length) in data_files:
        samples = load_babilong_file(data_files[task, length], task, length)[:num_samples]
      elif length in lengths:
        samples = make_babilong_samples(task, length, num_samples, tokenizer, seed=seed,
                                        prompt_reserve=prompt_reserve, log=log, fit_length=fit_length)
      else:
        samples = []
      cell = []
      for sample in samples:
        prediction = generate_fn(sample.prompt, max_new_tokens)
        cell.append(dict(task=task, length=length, index=sample.index, question=sample.question,
                         target=sample.target, prediction=prediction, num_tokens=sample.num_tokens,
                         label_correct=label_match(prediction, sample.target, sample.question, task),
                         exact=exact_match(prediction, sample.target)))
      records += cell
      key = f"{task}/{length}"
      label_acc[key] = 100.0 * np.mean([r["label_correct"] for r in cell]) if cell else math.nan
      exact_acc[key] = 100.0 * np.mean([r["exact"] for r in cell]) if cell else math.nan
      if samples != []:
        log(f"BABILong {task} length {length}: label accuracy {label_acc[key]:.1f}, exact match "
            f"{exact_acc[key]:.1f} over {len(cell)} samples")
  summary = dict(
      tasks=list(tasks), lengths=all_lengths, seed=seed, prompt_reserve=prompt_reserve,
      questions=(f"the same at every generated length: the first {num_samples} whose facts fit "
                 f"{fit_length} tokens" if fit_length else "no length budget (facts only, or files)"),
      max_new_tokens=max_new_tokens, prompt_format=make_prompt("{context}", "{question}"),
      background=prose.SUBSTITUTION, length_unit="tokens of the evaluated model's tokenizer",
      data_files={f"{t}/{L}": p for (t, L), p in data_files.items()},
      label_accuracy=label_acc, exact_match=exact_acc)
  _write(summary, records, out_dir)
  return summary


def _write(summary: dict, records: list[dict], out_dir: str) -> None:
  base = os.path.join(out_dir, "babilong")
  with open(base + ".json", "w", encoding="utf-8") as f:
    json.dump(dict(summary, samples=records), f, indent=1)
  lengths, tasks = summary["lengths"], summary["tasks"]

  def fmt(x):
    return "—" if math.isnan(x) else f"{x:.1f}"

  lines = ["# BABILong-style bAbI qa1–qa5", "", summary["background"],
           f"Lengths in {summary['length_unit']}; prompt: `{summary['prompt_format']!r}`; greedy, "
           f"{summary['max_new_tokens']} new tokens.", ""]
  for title, table in (("Label-set accuracy (BABILong metric), %", summary["label_accuracy"]),
                       ("Exact match, %", summary["exact_match"])):
    rows = [[t] + [fmt(table[f"{t}/{L}"]) for L in lengths] for t in tasks]
    lines += [f"## {title}", "", markdown_table(["task \\ length"] + lengths, rows), ""]
  with open(base + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  plots.save_line_plot(lengths, {t: [summary["label_accuracy"][f"{t}/{L}"] for L in lengths] for t in tasks},
                       base + "_accuracy.png", title="BABILong-style accuracy (label metric)",
                       xlabel="context length (tokens)", ylabel="accuracy (%)")
