"""RULER single-needle NIAH (S-NIAH-1/2/3) generator, ``string_match_all`` scorer and depth × length runner.

Implements NVIDIA/RULER ``niah_single_{1,2,3}`` as described in EVALS_NOTES.md §2 (own code, written from
that description):

* needle ``One of the special magic {numbers|uuids} for {key} is: {value}.``; key ``{adjective}-{noun}``
  drawn uniformly from the sorted set of wonderwords adjective × noun pairs (read from the installed
  package's ``assets/*.txt``); value a 7-digit number or a UUID4 string (§2.2);
* haystack: task 1 repeats the noise unit, one per line, the needle line inserted at a unit index; tasks 2/3
  take the first ``n`` words of the prose corpus, split it into sentences and insert the needle after sentence
  ``int(num_sentences · depth / 100)`` (§2.2). The prose is the KJV (:mod:`atlas_jax.evals.prose`) instead of
  Paul Graham's essays — recorded in every output file;
* the RULER template with the single-needle rewrite and the answer prefix (§2.3);
* length control: binary search on the caller's tokenizer for the largest haystack with
  ``len(tokens(input + answer_prefix)) + tokens_to_generate ≤ length`` (§2.4). A sample that still overflows
  (its key/value tokenize longer) shrinks by its excess converted to units, not by RULER's fixed unit step
  (500 words), so every sample stays close to the target length;
* ``string_match_all``: mean over samples of the fraction of answers found, case-insensitively, in the
  stripped prediction, × 100 (§2.5).

Samples are generated lazily (one context string in memory at a time), so contexts up to 1 M tokens work.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import importlib.resources
import json
import math
import os
import random
import re
import uuid
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from atlas_jax.evals import plots, prose
from atlas_jax.markdown import markdown_table

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
            "{type_needle_v} for {query} mentioned in the provided text?")
ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NOISE_UNIT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = tuple(int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)))  # RULER's 40 depths (%)
TOKENS_TO_GENERATE = 128


@dataclasses.dataclass(frozen=True)
class NiahTask:
  name: str
  label: str  # the paper's name
  haystack: str  # "noise" | "essay"
  type_needle_v: str  # "numbers" | "uuids" (plural, as in the needle sentence)


TASKS = {
    "niah_single_1": NiahTask("niah_single_1", "S-NIAH-1", "noise", "numbers"),
    "niah_single_2": NiahTask("niah_single_2", "S-NIAH-2", "essay", "numbers"),
    "niah_single_3": NiahTask("niah_single_3", "S-NIAH-3", "essay", "uuids"),
}
_ALIASES = {t.label.lower(): n for n, t in TASKS.items()}


def get_task(task: str) -> NiahTask:
  """``niah_single_{1,2,3}`` or the paper label ``S-NIAH-{1,2,3}``."""
  name = _ALIASES.get(task.lower(), task)
  if name not in TASKS:
    raise ValueError(f"unknown NIAH task {task!r}; expected one of {sorted(TASKS)} or "
                     f"{sorted(t.label for t in TASKS.values())}.")
  return TASKS[name]


# ----------------------------------------------------------------------------------------------- keys


def _wonderwords_list(name: str) -> list[str]:
  """A wonderwords asset list, read like wonderwords' own loader (one word a line, right-stripped)."""
  path = importlib.resources.files("wonderwords") / "assets" / name
  return [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines()]


class WonderwordsKeys:
  """``sorted(set(f"{a}-{n}" for a in adjectives for n in nouns))``, indexable without building its 6.2 M strings.

  The keys of an adjective ``a`` form one contiguous sorted block unless another adjective starts with
  ``a + "-"`` (``blue`` / ``blue-eyed``); such adjectives form a group sharing the prefix ``root + "-"``, and
  only those groups' keys are built (and sorted) explicitly. Groups are ordered by ``root + "-"``.
  """

  def __init__(self, adjectives: Sequence[str] | None = None, nouns: Sequence[str] | None = None):
    adjectives = _wonderwords_list("adjectivelist.txt") if adjectives is None else adjectives
    nouns = _wonderwords_list("nounlist.txt") if nouns is None else nouns
    self._adjectives, self._noun_set = set(adjectives), set(nouns)
    self._nouns = sorted(self._noun_set)
    self._group_cache: dict[int, list[str]] = {}
    if not self._adjectives or not self._nouns:
      raise ValueError("WonderwordsKeys needs at least one adjective and one noun.")
    groups: dict[str, list[str]] = {}
    for adj in sorted(self._adjectives):
      groups.setdefault(self._root(adj), []).append(adj)
    self._groups = sorted(groups.items(), key=lambda item: item[0] + "-")
    sizes = [len(self._nouns) if len(members) == 1 else len(self._group_keys(i))
             for i, (_, members) in enumerate(self._groups)]
    self._starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()

  def _root(self, adj: str) -> str:
    for i, ch in enumerate(adj):
      if ch == "-" and adj[:i] in self._adjectives:
        return adj[:i]
    return adj

  def _group_keys(self, group: int) -> list[str]:
    if group not in self._group_cache:  # a handful of small groups (e.g. blue / blue-eyed)
      self._group_cache[group] = sorted({f"{a}-{n}" for a in self._groups[group][1] for n in self._nouns})
    return self._group_cache[group]

  def __len__(self) -> int:
    return self._starts[-1]

  def __getitem__(self, index: int) -> str:
    if not 0 <= index < len(self):
      raise IndexError(f"key index {index} out of range [0, {len(self)}).")
    group = bisect.bisect_right(self._starts, index) - 1
    offset = index - self._starts[group]
    members = self._groups[group][1]
    if len(members) == 1:
      return f"{members[0]}-{self._nouns[offset]}"
    return self._group_keys(group)[offset]

  def __contains__(self, key: str) -> bool:
    return any(ch == "-" and key[:i] in self._adjectives and key[i + 1:] in self._noun_set
               for i, ch in enumerate(key))


@functools.lru_cache(maxsize=1)
def default_keys() -> WonderwordsKeys:
  return WonderwordsKeys()


def _draw_value(rng: random.Random, type_needle_v: str) -> str:
  if type_needle_v == "numbers":
    return str(rng.randint(1_000_000, 9_999_999))
  return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# -------------------------------------------------------------------------------------------- samples


@dataclasses.dataclass(frozen=True)
class NiahSample:
  """One S-NIAH prompt. The model reads ``input + answer_prefix`` and continues it."""

  task: str
  index: int
  length: int  # target: token_length + tokens_to_generate ≤ length
  input: str  # template with the haystack, ending with the question
  answer_prefix: str
  answers: tuple[str, ...]
  key: str
  needle: str
  depth: float  # percent; the requested depth, or the realised one when drawn at random
  token_length: int  # tokens of input + answer_prefix
  haystack_size: int  # words (essay) or noise units

  @property
  def prompt(self) -> str:
    return self.input + self.answer_prefix


def _template(task: NiahTask) -> tuple[str, str, str]:
  """(question template, answer prefix, value noun) after RULER's single-needle rewrite (§2.3)."""
  text = TEMPLATE + "\x00" + ANSWER_PREFIX
  for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
    text = text.replace(old, new)
  question, prefix = text.split("\x00")
  return question, prefix, task.type_needle_v[:-1]


class _Haystack:
  """Builds the context for a haystack size; caches the essay sentences of the last size asked for."""

  def __init__(self, task: NiahTask):
    self.task = task
    self._cached: tuple[int, list[str]] | None = None

  def _sentences(self, n: int) -> list[str]:
    if self._cached is None or self._cached[0] != n:
      self._cached = (n, prose.split_sentences(prose.first_words(n).strip()))
    return self._cached[1]

  def context(self, n: int, needle: str, depth: float | None, rng: random.Random) -> tuple[str, float]:
    """(context, depth %) with the needle at ``depth`` (or a RULER random depth when None)."""
    if self.task.haystack == "noise":
      index = int(rng.random() * n) if depth is None else min(n, int(n * depth / 100))
      lines = [NOISE_UNIT] * n
      lines.insert(index, needle)
      return "\n".join(lines), (100.0 * index / n if depth is None else float(depth))
    sentences = self._sentences(n)
    depth = rng.choice(DEPTHS) if depth is None else depth
    pos = int(len(sentences) * depth / 100)
    return " ".join([" ".join(sentences[:pos]), needle, " ".join(sentences[pos:])]), float(depth)


def _unit_step(task: NiahTask, length: int) -> int:
  if task.haystack == "essay":
    return 500
  return 5 if length < 4096 else 25


def _depth_of(index: int, num_samples: int, depths: Sequence[float]) -> float:
  """Sample `index`'s depth: in turn through `depths`, or spread evenly over them when there are fewer samples
  than depths (20 samples over 40 depths take every other depth, not the first 20)."""
  if num_samples < len(depths):
    return depths[index * len(depths) // num_samples]
  return depths[index % len(depths)]


def make_niah_samples(task: str, length: int, num_samples: int, tokenizer, seed: int = 42,
                      depths: Sequence[float] | None = None,
                      tokens_to_generate: int = TOKENS_TO_GENERATE) -> Iterator[NiahSample]:
  """Lazily yields ``num_samples`` S-NIAH samples whose prompt fits ``length`` tokens of ``tokenizer``.

  Args:
    task: ``niah_single_{1,2,3}`` (or ``S-NIAH-{1,2,3}``).
    length: the target sequence length in ``tokenizer`` tokens, generation included.
    num_samples: how many samples.
    tokenizer: anything with ``encode(str) -> list[int]``.
    seed: seeds the key/value/depth draws (sample ``i`` is the same for every length and tokenizer).
    depths: needle depths in percent, used in turn (sample ``i`` gets ``depths[i % len(depths)]``; with fewer
      samples than depths, spread evenly over them);
      None draws them as RULER does (a random unit index for the noise haystack, one of :data:`DEPTHS` for
      the essay haystack).
    tokens_to_generate: room left for the answer (RULER: 128).
  """
  spec = get_task(task)
  if length <= tokens_to_generate:
    raise ValueError(f"length must exceed tokens_to_generate={tokens_to_generate}; got {length}.")
  if num_samples < 0:
    raise ValueError(f"num_samples must be ≥ 0; got {num_samples}.")
  if depths is not None:
    if not depths or any(not 0 <= d <= 100 for d in depths):
      raise ValueError(f"depths must be a non-empty list of percentages in [0, 100]; got {list(depths)}.")
  return _generate(spec, length, num_samples, tokenizer, seed, depths, tokens_to_generate)


def _generate(spec: NiahTask, length: int, num_samples: int, tokenizer, seed: int, depths, tokens_to_generate: int):
  question, prefix, noun = _template(spec)
  keys = default_keys()
  haystack = _Haystack(spec)

  def build(n: int, key: str, value: str, depth, rng: random.Random):
    needle = NEEDLE.format(type_needle_v=spec.type_needle_v, key=key, value=value)
    context, depth = haystack.context(n, needle, depth, rng)
    text = question.format(type_needle_v=noun, context=context, query=key)
    answer_prefix = prefix.format(type_needle_v=noun, query=key)
    return text, answer_prefix, needle, depth, len(tokenizer.encode(text + answer_prefix))

  def fits(n: int, rng: random.Random) -> bool:
    key, value = keys[rng.randrange(len(keys))], _draw_value(rng, spec.type_needle_v)
    return build(n, key, value, None if depths is None else depths[0], rng)[-1] + tokens_to_generate <= length

  # Binary search for the largest haystack that fits (own RNG, so the samples don't depend on the search).
  search_rng = random.Random(f"niah-search-{seed}")
  step = _unit_step(spec, length)
  probe = build(step, keys[0], _draw_value(search_rng, spec.type_needle_v), 50, search_rng)[-1]
  low, high, best = 1, max(int(length / (probe / step) * 3), 2 * step), 0
  while low <= high:
    mid = (low + high) // 2
    if fits(mid, search_rng):
      best, low = mid, mid + 1
    else:
      high = mid - 1
  if best == 0:
    raise ValueError(f"length={length} is too short for {spec.name}: the template with a one-unit haystack and "
                     f"tokens_to_generate={tokens_to_generate} does not fit in {length} tokens of "
                     f"{type(tokenizer).__name__}.")

  rng = random.Random(seed)
  for index in range(num_samples):
    key, value = keys[rng.randrange(len(keys))], _draw_value(rng, spec.type_needle_v)
    depth = None if depths is None else _depth_of(index, num_samples, depths)
    n = best
    while True:
      # A random depth has its own per-sample stream: the same draw at every size tried, and the key/value
      # stream of later samples does not depend on the haystack size.
      depth_rng = random.Random(f"niah-depth-{seed}-{index}")
      text, answer_prefix, needle, realised, count = build(n, key, value, depth, depth_rng)
      if count + tokens_to_generate <= length:
        break
      if n == 1:
        raise ValueError(f"sample {index} of {spec.name} does not fit length={length} even with a one-unit "
                         "haystack.")
      # RULER shrinks by one unit step (500 words); shrinking by the excess in units keeps the length near
      # the target (a step is 1/3 of a 4K byte-level context).
      excess = count + tokens_to_generate - length
      n = max(1, n - max(1, math.ceil(excess * n / count)))
    yield NiahSample(task=spec.name, index=index, length=length, input=text, answer_prefix=answer_prefix,
                     answers=(value,), key=key, needle=needle, depth=realised, token_length=count,
                     haystack_size=n)


# ------------------------------------------------------------------------------------------- scoring

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_prediction(text: str) -> str:
  """RULER's clean-up: strip, control characters → newline, strip again."""
  return _CONTROL.sub("\n", text.strip()).strip()


def sample_match_all(prediction: str, answers: Sequence[str]) -> float:
  """Fraction (0–1) of ``answers`` found case-insensitively in the cleaned prediction."""
  if isinstance(answers, str):  # a str is a Sequence[str] too: it would be scored character by character
    raise TypeError(f"answers must be a list of strings, not the string {answers!r}; wrap it: [{answers!r}].")
  if not answers:
    raise ValueError("answers must not be empty.")
  pred = postprocess_prediction(prediction).lower()
  return sum(a.lower() in pred for a in answers) / len(answers)


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """RULER ``string_match_all``: mean over samples of :func:`sample_match_all`, × 100."""
  if len(predictions) != len(references):
    raise ValueError(f"got {len(predictions)} predictions for {len(references)} references.")
  if not predictions:
    raise ValueError("string_match_all needs at least one prediction.")
  return 100.0 * sum(sample_match_all(p, r) for p, r in zip(predictions, references)) / len(predictions)


# -------------------------------------------------------------------------------------------- runner


def run_niah(generate_fn: Callable[[str, int], str], tokenizer, tasks: Sequence[str] = tuple(TASKS),
             lengths: Sequence[int] = (2048, 4096, 8192, 16384), num_samples: int = 500, out_dir: str = ".",
             log: Callable[[str], None] = print, *, depths: Sequence[float] = DEPTHS, seed: int = 42,
             tokens_to_generate: int = TOKENS_TO_GENERATE) -> dict[str, dict]:
  """Scores ``generate_fn`` on a depth × length grid per task and writes ``{task}.json/.md/_heatmap.png``.

  ``generate_fn(prompt_text, max_new_tokens)`` returns the greedy continuation text. ``num_samples`` is per
  length, spread over ``depths`` in turn (RULER: 500 per length; 40 depths → 12–13 per cell).
  Returns ``{task: summary}`` (the JSON content without the per-sample records).
  """
  if depths is None:  # checked before any generation: the summary is a grid over these depths
    raise ValueError("run_niah scores a depth × length grid, so depths must be a list of percentages "
                     "(make_niah_samples(depths=None) draws random depths for samples outside a grid).")
  os.makedirs(out_dir, exist_ok=True)
  summaries = {}
  for task in tasks:
    spec = get_task(task)
    records = []
    for length in lengths:
      for sample in make_niah_samples(spec.name, length, num_samples, tokenizer, seed=seed, depths=depths,
                                      tokens_to_generate=tokens_to_generate):
        prediction = generate_fn(sample.prompt, tokens_to_generate)
        records.append(dict(index=sample.index, length=length, depth=sample.depth, key=sample.key,
                            answers=list(sample.answers), token_length=sample.token_length,
                            haystack_size=sample.haystack_size, prediction=prediction,
                            score=100.0 * sample_match_all(prediction, sample.answers)))
      cell = [r["score"] for r in records if r["length"] == length]
      log(f"{spec.label} ({spec.name}) length {length}: {np.mean(cell):.1f} over {len(cell)} samples")
    summary = _summarise(spec, records, lengths, depths, seed, tokens_to_generate)
    _write(spec, summary, records, out_dir)
    summaries[spec.name] = summary
  return summaries


def _mean(values: list[float]) -> float:
  return float(np.mean(values)) if values else math.nan


def _summarise(spec: NiahTask, records, lengths, depths, seed, tokens_to_generate) -> dict:
  depth_rows = sorted(set(float(d) for d in depths))
  grid = [[_mean([r["score"] for r in records if r["length"] == L and r["depth"] == d]) for L in lengths]
          for d in depth_rows]
  return dict(
      task=spec.name, label=spec.label, metric="string_match_all (0-100)",
      haystack="noise sentences" if spec.haystack == "noise" else prose.SOURCE,
      substitution=prose.SUBSTITUTION if spec.haystack == "essay" else None,
      seed=seed, tokens_to_generate=tokens_to_generate, lengths=list(lengths), depths=depth_rows,
      score_by_length={str(L): _mean([r["score"] for r in records if r["length"] == L]) for L in lengths},
      mean_token_length={str(L): _mean([r["token_length"] for r in records if r["length"] == L]) for L in lengths},
      score_by_depth_and_length=grid,
      score=_mean([r["score"] for r in records]))


def _fmt(x: float) -> str:
  return "—" if math.isnan(x) else f"{x:.1f}"


def _write(spec: NiahTask, summary: dict, records, out_dir: str) -> None:
  base = os.path.join(out_dir, spec.name)
  with open(base + ".json", "w", encoding="utf-8") as f:
    json.dump(dict(summary, samples=records), f, indent=1)
  lengths = summary["lengths"]
  lines = [f"# {spec.label} (RULER {spec.name})", "",
           f"Metric: {summary['metric']}; greedy, {summary['tokens_to_generate']} new tokens; seed {summary['seed']}.",
           f"Haystack: {summary['haystack']}."]
  if summary["substitution"]:
    lines.append(summary["substitution"])
  rows = [[f"{depth:g}"] + [_fmt(x) for x in row]
          for depth, row in zip(summary["depths"], summary["score_by_depth_and_length"])]
  rows.append(["**all**"] + [_fmt(summary["score_by_length"][str(L)]) for L in lengths])
  lines += ["", markdown_table(["depth % \\ length"] + lengths, rows)]
  lines += ["", f"Overall: {_fmt(summary['score'])}", ""]
  with open(base + ".md", "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  plots.save_heatmap(summary["score_by_depth_and_length"], [f"{d:g}" for d in summary["depths"]], lengths,
                     base + "_heatmap.png", title=f"{spec.label}: string_match_all", xlabel="context length (tokens)",
                     ylabel="needle depth (%)")
