"""Evaluate checkpoints or presets on the memory evaluations, side by side, offline.

    python -m experiments.evaluate --workdir=/tmp/atlas_demo --evals=perplexity,niah,babilong --out=/tmp/eval
    python -m experiments.evaluate --preset=atlas,transformer++ --evals=mad --mad_scale=reduced --out=/tmp/mad
    python -m experiments.evaluate --workdir=/tmp/atlas_demo --evals=lm_eval \
        --lm_eval_tasks=toy_mc --lm_eval_include=tests/evals/lm_eval_tasks --out=/tmp/eval

Models: ``--workdir`` (training runs; newest checkpoint or ``--step``) and/or ``--preset`` (random init at
``--size``; MAD trains presets from scratch and uses only these names — a workdir's preset is read from its
checkpoint). Evaluations (``--evals``):
  perplexity  nats/token, perplexity and bits/byte on ``--text_file`` (.txt, .jsonl with "text", .npy tokens),
              default the KJV validation books (the demo's held-out split);
  niah        RULER S-NIAH-1/2/3 over ``--lengths`` × 40 depths (heatmaps);
  babilong    bAbI qa1–qa5 facts hidden in KJV prose at ``--lengths`` (``--babilong_files`` for real files);
  mad         the six MAD tasks (``--mad_scale`` reduced on CPU, full on GPUs). Presets with chunk-granularity
              updates (atlas, atlas++, atlas_mag, atlas_mal) write memory once per chunk, so a token cannot
              recall a pair from its own chunk: ``--mad_chunk_size`` (e.g. 16) trades speed for recall;
  lm_eval     lm-evaluation-harness tasks through the "atlas-jax" adapter (``--lm_eval_tasks``).
Long contexts stream through the model's recurrent state (memory models run in constant memory).

Writes ``<out>/<model>/<eval>/`` (each evaluation's JSON, Markdown and plots) and ``<out>/summary.json`` +
``<out>/summary.md``: one row per model, one column per headline metric.
"""

from __future__ import annotations

import json
import math
import os
import re
import time

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_list("workdir", [], "training workdirs to evaluate")
_PRESET = flags.DEFINE_list("preset", [], "presets to evaluate (random init; MAD trains them)")
_SIZE = flags.DEFINE_string("size", "tiny", "preset size")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: newest)")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer kind (default: the run's, or bytes for presets)")
_TOKENIZER_PATH = flags.DEFINE_string("tokenizer_path", "", "tokenizer file for --tokenizer")
_EVALS = flags.DEFINE_list("evals", ["perplexity"], "perplexity, niah, babilong, mad, lm_eval")
_OUT = flags.DEFINE_string("out", None, "results folder", required=True)
_CHUNK = flags.DEFINE_integer("chunk_size", 256, "tokens per streamed piece")
_SEED = flags.DEFINE_integer("seed", 0, "init seed of preset models (and MAD's training order)")
_DATA_SEED = flags.DEFINE_integer("data_seed", 42, "sample seed of niah and babilong (RULER's and BABILong's 42)")
_TEXT_FILE = flags.DEFINE_string("text_file", None, "perplexity text (.txt/.jsonl) or token (.npy) file")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", None, "score at most this many tokens (perplexity)")
_LENGTHS = flags.DEFINE_list("lengths", ["1024", "2048", "4096"],
                             "context lengths in tokens (niah; babilong, where 0 is the facts alone)")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 20, "samples per length and task (niah, babilong)")
_NIAH_TASKS = flags.DEFINE_list("niah_tasks", ["niah_single_1", "niah_single_2", "niah_single_3"], "S-NIAH tasks")
_NIAH_TOKENS = flags.DEFINE_integer("niah_new_tokens", 128, "tokens generated per S-NIAH sample (RULER: 128)")
_BABILONG_TASKS = flags.DEFINE_list("babilong_tasks", ["qa1", "qa2", "qa3", "qa4", "qa5"], "bAbI tasks")
_BABILONG_FILES = flags.DEFINE_list("babilong_files", [], "real BABILong files as task/length=path")
_MAD_SCALE = flags.DEFINE_enum("mad_scale", "reduced", ["reduced", "full"], "MAD protocol scale")
_MAD_TASKS = flags.DEFINE_list("mad_tasks", [], "MAD tasks (default: all six)")
_MAD_CHUNK = flags.DEFINE_integer("mad_chunk_size", None, "memory chunk size C for MAD (default: the preset's)")
_LM_EVAL_TASKS = flags.DEFINE_list("lm_eval_tasks", [], "lm-eval task names")
_LM_EVAL_INCLUDE = flags.DEFINE_string("lm_eval_include", None, "folder of extra lm-eval task YAMLs")
_LM_EVAL_LIMIT = flags.DEFINE_integer("lm_eval_limit", None, "examples per lm-eval task")

EVALS = ("perplexity", "niah", "babilong", "mad", "lm_eval")


def _model_specs() -> list[tuple[str, dict]]:
  """(name, load_model kwargs) per model; names are unique folder names."""
  specs = [(os.path.basename(os.path.normpath(w)) or "workdir", dict(workdir=w, step=_STEP.value))
           for w in _WORKDIR.value]
  specs += [(f"{p}-{_SIZE.value}", dict(preset=p, size=_SIZE.value, seed=_SEED.value)) for p in _PRESET.value]
  if not specs:
    raise app.UsageError("give at least one --workdir or --preset.")
  seen: dict[str, int] = {}
  unique = []
  for name, kwargs in specs:
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
    seen[name] = seen.get(name, 0) + 1
    unique.append((name if seen[name] == 1 else f"{name}-{seen[name]}", kwargs))
  return unique


def _babilong_files() -> dict:
  from atlas_jax.evals.babilong import LABELS

  files = {}
  for item in _BABILONG_FILES.value:
    key, sep, path = item.partition("=")
    task, slash, length = key.partition("/")
    if not sep or not slash:
      raise app.UsageError(f"--babilong_files entry {item!r}: expected task/length=path (e.g. qa1/4k=qa1.json).")
    if task not in LABELS or task not in _BABILONG_TASKS.value:
      raise app.UsageError(f"--babilong_files entry {item!r}: task {task!r} must be one of --babilong_tasks "
                           f"({','.join(_BABILONG_TASKS.value)}) with a label set ({', '.join(sorted(LABELS))}).")
    if not os.path.exists(path):
      raise app.UsageError(f"--babilong_files entry {item!r}: no file {path!r}.")
    files[task, int(length) if length.isdigit() else length] = path
  return files


def _lengths() -> list[int]:
  """--lengths as ints, checked against what each selected evaluation needs (before any of them runs)."""
  from atlas_jax.evals.babilong import PROMPT_RESERVE

  if not all(x.isdigit() for x in _LENGTHS.value):
    raise app.UsageError(f"--lengths={','.join(_LENGTHS.value)}: expected token counts.")
  lengths = [int(x) for x in _LENGTHS.value]
  if "niah" in _EVALS.value and any(n <= _NIAH_TOKENS.value for n in lengths):
    raise app.UsageError(f"--lengths={_LENGTHS.value}: niah needs lengths above --niah_new_tokens="
                         f"{_NIAH_TOKENS.value} (the room left for the answer).")
  if "babilong" in _EVALS.value and any(0 < n <= PROMPT_RESERVE for n in lengths):
    raise app.UsageError(f"--lengths={_LENGTHS.value}: babilong needs 0 (facts only) or lengths above "
                         f"{PROMPT_RESERVE} (the room left for the question and answer).")
  return lengths


def _check_fits(tokenizer, lengths: list[int]) -> None:
  """The shortest length must hold each NIAH template and some BABILong stories in this tokenizer's tokens:
  fail before the first evaluation runs, not midway through them."""
  shortest = min((n for n in lengths if n), default=None)
  if shortest is None:
    return
  if "niah" in _EVALS.value:
    from atlas_jax.evals.niah import make_niah_samples
    for task in _NIAH_TASKS.value:
      next(iter(make_niah_samples(task, shortest, 1, tokenizer, tokens_to_generate=_NIAH_TOKENS.value)))
  if "babilong" in _EVALS.value:
    from atlas_jax.evals.babilong import make_babilong_samples
    for task in _BABILONG_TASKS.value:
      next(make_babilong_samples(task, shortest, 1, tokenizer))


def _evaluate_model(name: str, kwargs: dict, out: str) -> dict:
  """Run the selected evaluations on one model; returns its headline metrics."""
  from atlas_jax.evals.lm import LanguageModel
  from atlas_jax.evals.loading import load_model

  headline: dict[str, float] = {}
  needs_lm = [e for e in _EVALS.value if e != "mad"]
  if needs_lm:
    model, tokenizer, info = load_model(**kwargs, tokenizer=_TOKENIZER.value, tokenizer_path=_TOKENIZER_PATH.value)
    print(f"[{name}] {info['source']} {info.get('workdir') or info.get('preset')} step={info.get('step')} "
          f"params={info['num_params']:,}", flush=True)
    lm = LanguageModel(model, tokenizer, chunk_size=_CHUNK.value)
  lengths = _lengths()
  if needs_lm:
    _check_fits(tokenizer, lengths)
  for name_eval in _EVALS.value:
    if name_eval == "mad" and "preset" not in kwargs:
      print(f"[{name}] mad: skipped (MAD trains presets from scratch; pass --preset)", flush=True)
      continue
    folder = os.path.join(out, name, name_eval)
    os.makedirs(folder, exist_ok=True)
    start = time.time()
    print(f"[{name}] {name_eval} → {folder}", flush=True)
    if name_eval == "perplexity":
      from atlas_jax.evals.perplexity import run_perplexity
      result = run_perplexity(lm, folder, path=_TEXT_FILE.value, max_tokens=_MAX_TOKENS.value)
      headline["perplexity"] = result["perplexity"]
      if "bits_per_byte" in result:
        headline["bits/byte"] = result["bits_per_byte"]
    elif name_eval == "niah":
      from atlas_jax.evals.niah import run_niah
      result = run_niah(lm.generate, tokenizer, _NIAH_TASKS.value, lengths, _NUM_SAMPLES.value, folder,
                        seed=_DATA_SEED.value, tokens_to_generate=_NIAH_TOKENS.value)
      headline.update({f"{task} (%)": r["score"] for task, r in result.items()})
    elif name_eval == "babilong":
      from atlas_jax.evals.babilong import run_babilong
      result = run_babilong(lm.generate, tokenizer, _BABILONG_TASKS.value, lengths, _NUM_SAMPLES.value, folder,
                            seed=_DATA_SEED.value, data_files=_babilong_files())
      accs = [a for a in result["label_accuracy"].values() if not math.isnan(a)]
      headline["babilong label acc (%)"] = sum(accs) / len(accs) if accs else math.nan
    elif name_eval == "mad":
      from atlas_jax.evals import mad
      from atlas_jax.evals.mad_runner import RUN_SCALES, run_mad
      overrides = {"memory": {"chunk_size": _MAD_CHUNK.value}} if _MAD_CHUNK.value else None
      result = run_mad(kwargs["preset"], tasks=_MAD_TASKS.value or mad.TASKS, scale=_MAD_SCALE.value,
                       out_dir=folder, seed=_SEED.value, overrides=overrides)
      # MAD trains the scale's own model size, not --size (which names the row): say which.
      headline[f"MAD score ({_MAD_SCALE.value}, {RUN_SCALES[_MAD_SCALE.value].size} model)"] = result["mean_score"]
    elif name_eval == "lm_eval":
      from atlas_jax.evals.lm_eval_adapter import run_lm_eval
      headline.update(run_lm_eval(lm, _LM_EVAL_TASKS.value, folder, include_path=_LM_EVAL_INCLUDE.value,
                                  limit=_LM_EVAL_LIMIT.value))
    print(f"[{name}] {name_eval} done in {time.time() - start:.0f} s", flush=True)
  return headline


def write_summary(summary: dict[str, dict], out: str) -> str:
  """summary.json and summary.md (models × headline metrics); returns the Markdown."""
  with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  columns = []
  for metrics in summary.values():
    columns += [c for c in metrics if c not in columns]
  fmt = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
  from atlas_jax.markdown import markdown_table  # local, as the other atlas_jax imports here
  rows = [[name] + [fmt(metrics.get(c)) for c in columns] for name, metrics in summary.items()]
  text = "# Evaluation summary\n\n" + markdown_table(["model"] + columns, rows) + "\n"
  with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
    f.write(text)
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = sorted(set(_EVALS.value) - set(EVALS))
  if unknown:
    raise app.UsageError(f"unknown --evals {unknown}; expected some of {list(EVALS)}.")
  if "lm_eval" in _EVALS.value and not _LM_EVAL_TASKS.value:
    raise app.UsageError("--evals=lm_eval needs --lm_eval_tasks.")
  _babilong_files()  # a malformed entry fails now, not after the other evaluations
  _lengths()
  from atlas_jax.presets import get_preset
  for preset in _PRESET.value:
    try:
      get_preset(preset, _SIZE.value)
    except ValueError as e:
      raise app.UsageError(f"--preset={preset} --size={_SIZE.value}: {e}") from e
  if "perplexity" in _EVALS.value and _TEXT_FILE.value and not os.path.isfile(_TEXT_FILE.value):
    raise app.UsageError(f"--text_file={_TEXT_FILE.value!r} is not a file.")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  os.makedirs(_OUT.value, exist_ok=True)
  summary = {name: _evaluate_model(name, kwargs, _OUT.value) for name, kwargs in _model_specs()}
  print("\n" + write_summary(summary, _OUT.value), flush=True)


if __name__ == "__main__":
  app.run(main)
