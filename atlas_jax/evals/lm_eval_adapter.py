"""The lm-evaluation-harness (``lm-eval`` 0.4.13) model "atlas-jax" (EVALS_NOTES.md §4.1).

    python -m experiments.lm_eval_main --model atlas-jax --model_args workdir=runs/atlas --tasks lambada_openai
    python -m experiments.lm_eval_main --model atlas-jax --model_args preset=atlas,size=tiny,chunk_size=128 ...
    lm_eval.simple_evaluate(model=AtlasJaxLM(language_model), tasks=[...], task_manager=...)
    run_lm_eval(language_model, ["toy_mc"], out_dir, include_path="tests/evals/lm_eval_tasks")  # + JSON, Markdown

Requests (``Instance.args``) map onto a ``LanguageModel``:
  loglikelihood          (context, continuation) → (Σ log p, is_greedy). Trailing spaces of the context move to
                         the continuation; context + continuation is encoded jointly and split at the length of
                         the encoded context (the harness's own convention). An empty context is the separator.
  loglikelihood_rolling  (text,) → Σ log p(text | ⟨sep⟩), the whole document streamed, every token once.
  generate_until         (context, gen_kwargs) → greedy text, cut at the first of ``until`` (the harness does not
                         cut) and limited to ``max_gen_toks`` tokens (default: the model's ``max_gen_toks``).
                         Sampling (``do_sample=True``) is refused.
Requests are served one at a time (batch 1, streamed); loglikelihood requests are sorted by context so that the
choices of one multiple-choice question reuse the context's state. The CLI's batch_size, max_batch_size and
device arguments are accepted and ignored.

This module imports ``lm_eval`` (importing ``atlas_jax.evals`` does not); importing it registers "atlas-jax".
"""

from __future__ import annotations

import logging

from atlas_jax.evals.lm import LanguageModel
from atlas_jax.evals.loading import load_model
from atlas_jax.markdown import markdown_table

try:
  from lm_eval.api.model import LM
  from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError("atlas_jax.evals.lm_eval_adapter needs the lm-evaluation-harness: "
                    "pip install 'lm-eval==0.4.13' (no torch needed).") from e

log = logging.getLogger(__name__)


def _split_context(context: str, continuation: str) -> tuple[str, str]:
  """Move the context's trailing whitespace to the front of the continuation."""
  stripped = context.rstrip()
  return stripped, context[len(stripped):] + continuation


@register_model("atlas-jax")
class AtlasJaxLM(LM):
  """An lm-eval ``LM`` over a ``LanguageModel``: pass one, or build one from `workdir` or `preset` arguments.

  Args:
    lm: a ready ``LanguageModel`` (then no other model argument may be given).
    workdir, step: a training workdir and optional checkpoint step (``atlas_jax.evals.loading.load_model``).
    preset, size, seed, **overrides: a random-init preset model; ``overrides`` are ModelConfig fields.
    tokenizer, tokenizer_path: tokenizer kind / file (default: the run's tokenizer, or bytes for presets).
    chunk_size: streaming chunk length (default 256).
    max_gen_toks: generation limit when a request does not give one.
    batch_size, max_batch_size, device: passed by the harness CLI; ignored (requests run one at a time).
  """

  def __init__(self, lm: LanguageModel | None = None, *, workdir: str | None = None, step: int | None = None,
               preset: str | None = None, size: str = "tiny", seed: int = 0, tokenizer: str | None = None,
               tokenizer_path: str = "", chunk_size: int | None = None, max_gen_toks: int = 256, batch_size=None,
               max_batch_size=None, device=None, **overrides):
    super().__init__()
    del batch_size, max_batch_size, device
    if lm is not None:
      given = dict(workdir=workdir, step=step, preset=preset, tokenizer=tokenizer, chunk_size=chunk_size,
                   tokenizer_path=tokenizer_path or None, **overrides)
      given = sorted(k for k, v in given.items() if v is not None)
      if given:
        raise ValueError(f"lm= is a ready LanguageModel; the model arguments {given} would be ignored.")
      self.lm = lm
      self.info = {"source": "LanguageModel"}
    else:
      if workdir is None and preset is None:
        raise ValueError("atlas-jax needs model_args workdir=<training workdir> or preset=<name> (with size=); "
                         "e.g. --model_args preset=atlas,size=tiny.")
      model, tok, self.info = load_model(workdir=workdir, preset=preset, size=size, overrides=overrides or None,
                                         step=step, tokenizer=tokenizer, tokenizer_path=tokenizer_path, seed=seed)
      self.lm = LanguageModel(model, tok, chunk_size=256 if chunk_size is None else chunk_size)
    if max_gen_toks < 1:
      raise ValueError(f"max_gen_toks must be ≥ 1; got {max_gen_toks}.")
    self.max_gen_toks = int(max_gen_toks)

  def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation): the whole text's tokens split after the context's, as the harness
    does, unless the tokenizer merges across the boundary (e.g. "year 1" + "0" → "year", " 10"); the split
    would then give the context the answer's tokens and the continuation none, so the two are encoded apart."""
    context, continuation = _split_context(context, continuation)
    whole = self.lm.encode(context + continuation)
    context_ids = self.lm.encode(context) if context else []
    if whole[:len(context_ids)] != context_ids or len(whole) == len(context_ids):
      return context_ids, self.lm.encode(continuation)
    return context_ids, whole[len(context_ids):]

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    from tqdm import tqdm

    results: list[tuple[float, bool] | None] = [None] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: requests[i].args[0])
    for i in tqdm(order, disable=disable_tqdm, desc="atlas-jax loglikelihood"):
      context, continuation = requests[i].args
      context_ids, continuation_ids = self._encode_pair(context, continuation)
      result = (0.0, True) if not continuation_ids else self.lm.loglikelihood(context_ids, continuation_ids)
      results[i] = result
      self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    from tqdm import tqdm

    results = []
    for request in tqdm(requests, disable=disable_tqdm, desc="atlas-jax loglikelihood_rolling"):
      (text,) = request.args
      result = self.lm.rolling_loglikelihood(self.lm.encode(text))
      results.append(result)
      self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
    return results

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    from tqdm import tqdm

    results = []
    for request in tqdm(requests, disable=disable_tqdm, desc="atlas-jax generate_until"):
      context, gen_kwargs = request.args
      gen_kwargs = dict(gen_kwargs or {})
      if gen_kwargs.get("do_sample", False):
        raise NotImplementedError(f"atlas-jax decodes greedily; this task asks for sampling ({gen_kwargs}). Set "
                                  "do_sample=false in the task's generation_kwargs.")
      until = gen_kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
      result = self.lm.generate(context, max_new, stop=until)
      results.append(result)
      self.cache_hook.add_partial("generate_until", (context, gen_kwargs), result)
    return results


def run_lm_eval(lm: LanguageModel, tasks, out_dir: str, *, include_path: str | None = None,
                limit: int | None = None) -> dict[str, float]:
  """Run lm-eval `tasks` on `lm` (``include_path``: a folder of extra task YAMLs, used without lm-eval's
  built-in index); writes ``lm_eval.json`` and ``lm_eval.md`` into `out_dir` and returns
  {"<task> <metric>": value} for the numeric metrics (no standard errors)."""
  import json
  import os

  import lm_eval
  from lm_eval.tasks import TaskManager

  manager = (TaskManager(include_path=os.path.abspath(include_path), include_defaults=False) if include_path
             else TaskManager())
  results = lm_eval.simple_evaluate(model=AtlasJaxLM(lm), tasks=list(tasks), task_manager=manager, limit=limit)
  metrics = results["results"]
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "lm_eval.json"), "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=1, default=str)
  headline = {}
  rows = []
  for task, values in metrics.items():
    for metric, value in values.items():
      if isinstance(value, (int, float)) and "stderr" not in metric:
        rows.append([task, metric, f"{value:.4g}"])
        headline[f"{task} {metric.split(',')[0]}"] = float(value)
  with open(os.path.join(out_dir, "lm_eval.md"), "w", encoding="utf-8") as f:
    f.write("# lm-evaluation-harness\n\n" + markdown_table(["task", "metric", "value"], rows) + "\n")
  return headline
