"""lm-evaluation-harness integration, offline: local toy tasks, a fake uniform byte model with exact expected
metrics, then the "atlas-jax" adapter on a tiny random-init ATLAS (atlas_jax/evals/lm_eval_adapter.py)."""

from __future__ import annotations

import json
import math
import os
import re
import sys

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # any hub access fails fast instead of hanging
os.environ.setdefault("HF_HUB_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from atlas_jax.evals.lm import LanguageModel  # noqa: E402
from atlas_jax.evals.lm_eval_adapter import AtlasJaxLM  # noqa: E402
from tests.evals.lm_eval_tasks import toy_tasks  # noqa: E402

TASK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lm_eval_tasks")
LN256 = math.log(256)
# A tiny ATLAS through the CLI's model_args (the tiny training config's shapes); chunk_size 4 keeps the compiled
# piece lengths to 4, 2 and 1.
TINY_ATLAS_ARGS = ("preset=atlas,size=tiny,chunk_size=4,max_gen_toks=6,vocab_size=264,width=32,num_heads=2,"
                   "mlp_hidden=64,memory_heads=2,memory_head_dim=16")


class UniformByteLM(LM):
  """Every UTF-8 byte has probability 1/256; generation echoes the last word of the question's line."""

  def loglikelihood(self, requests):
    return [(-len(r.args[1].encode("utf-8")) * LN256, False) for r in requests]

  def loglikelihood_rolling(self, requests):
    return [-len(r.args[0].encode("utf-8")) * LN256 for r in requests]

  def generate_until(self, requests):
    out = []
    for r in requests:
      context, kwargs = r.args
      text = context.splitlines()[-2].split()[-1] + "\nmore text"
      cuts = [text.find(s) for s in kwargs["until"] if s in text]
      out.append(text[:min(cuts)] if cuts else text)
    return out


def _evaluate(model, tasks, include_path=TASK_DIR):
  manager = TaskManager(include_path=include_path, include_defaults=False)
  out = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, bootstrap_iters=0,
                                log_samples=False)
  return out["results"]


def _json_mc_task(tmp_path):
  """The multiple-choice toy task again, read by the HF "json" builder from a JSONL file (EVALS_NOTES §4.2)."""
  data = tmp_path / "toy_mc.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in toy_tasks.MC_DOCS))
  (tmp_path / "toy_mc_json.yaml").write_text(f"""\
task: toy_mc_json
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {tmp_path / "hf_cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_choice: "{{{{[sol1, sol2]}}}}"
doc_to_target: label
metric_list:
  - metric: acc
metadata:
  version: 1.0
""")
  return str(tmp_path)


def test_uniform_byte_model_gets_the_exact_metrics(tmp_path):
  results = _evaluate(UniformByteLM(), ["toy_mc", "toy_ppl", "toy_gen", "toy_mc_json"],
                      include_path=[TASK_DIR, _json_mc_task(tmp_path)])
  assert results["toy_mc"]["acc,none"] == toy_tasks.MC_UNIFORM_ACC
  assert results["toy_mc_json"]["acc,none"] == toy_tasks.MC_UNIFORM_ACC
  ppl = results["toy_ppl"]
  assert ppl["byte_perplexity,none"] == pytest.approx(256.0, rel=1e-12)
  assert ppl["bits_per_byte,none"] == pytest.approx(8.0, rel=1e-12)
  texts = [d["text"] for d in toy_tasks.PPL_DOCS]
  n_bytes = sum(len(t.encode()) for t in texts)
  n_words = sum(len(re.split(r"\s+", t)) for t in texts)
  assert ppl["word_perplexity,none"] == pytest.approx(math.exp(n_bytes * LN256 / n_words), rel=1e-12)
  assert results["toy_gen"]["exact_match,none"] == pytest.approx(toy_tasks.GEN_ECHO_EXACT_MATCH)


def test_adapter_request_mapping(tmp_path):
  """Each request type goes to the LanguageModel as documented (checked against direct calls)."""
  from lm_eval.api.instance import Instance

  adapter = AtlasJaxLM.create_from_arg_string(TINY_ATLAS_ARGS, {"batch_size": 1, "device": None})
  lm = adapter.lm
  assert isinstance(lm, LanguageModel) and lm.chunk_size == 4 and adapter.max_gen_toks == 6
  assert lm.config.vocab_size == 264 and lm.config.width == 32

  def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)

  (total, greedy), (empty_total, _) = adapter.loglikelihood(
      [request("loglikelihood", "Question: why? ", "Because"), request("loglikelihood", "", "Because")])
  context, continuation = lm.encode("Question: why?"), lm.encode(" Because")  # the space moves right
  assert (total, greedy) == lm.loglikelihood(context, continuation)
  assert empty_total == lm.loglikelihood([lm.prefix_id], lm.encode("Because"))[0]
  (rolling,) = adapter.loglikelihood_rolling([request("loglikelihood_rolling", "Some text.")])
  assert rolling == lm.rolling_loglikelihood(lm.encode("Some text."))
  full = lm.generate("Q:", 6)
  stop = full[2:4] if len(full) >= 4 else "\x00"
  outputs = adapter.generate_until([request("generate_until", "Q:", {"until": [stop], "max_gen_toks": 6}),
                                    request("generate_until", "Q:", {"until": "never"}),
                                    request("generate_until", "Q:", {"max_gen_toks": 3})])
  assert outputs == [full[:full.find(stop)] if stop in full else full, full, lm.generate("Q:", 3)]
  with pytest.raises(NotImplementedError, match="decodes greedily"):
    adapter.generate_until([request("generate_until", "Q:", {"do_sample": True, "until": []})])
  assert AtlasJaxLM(lm).lm is lm and AtlasJaxLM(lm, max_gen_toks=3).max_gen_toks == 3
  with pytest.raises(ValueError, match=r"the model arguments \['chunk_size'\] would be ignored"):
    AtlasJaxLM(lm, chunk_size=8)
  with pytest.raises(ValueError, match="needs model_args workdir="):
    AtlasJaxLM.create_from_arg_string("chunk_size=8")
  with pytest.raises(ValueError, match="unknown model override keys"):
    AtlasJaxLM.create_from_arg_string("preset=atlas,widht=3")


def test_a_continuation_merged_into_the_context_is_encoded_apart():
  """With a BPE-like tokenizer that has " 10" as one token, "The year is 1" + "0" tokenizes as "... is", " 10":
  split after the context's tokens, the continuation would be empty and scored as certain."""
  vocab = {" 10": 0, " 1": 1, "0": 2, "The": 3, " year": 4, " is": 5}

  def encode(text):  # greedy longest match
    ids = []
    while text:
      piece = max((p for p in vocab if text.startswith(p)), key=len)
      ids.append(vocab[piece])
      text = text[len(piece):]
    return ids

  stub = type("Stub", (), {"lm": type("L", (), {"encode": staticmethod(encode)})()})()
  assert AtlasJaxLM._encode_pair(stub, "The year is 1", "0") == ([3, 4, 5, 1], [2])
  assert AtlasJaxLM._encode_pair(stub, "The year is", " 10") == ([3, 4, 5], [0])  # no merge: the harness's split


def test_tiny_atlas_runs_offline_and_deterministically():
  tasks = ["toy_mc", "toy_ppl", "toy_gen"]
  first = _evaluate(AtlasJaxLM.create_from_arg_string(TINY_ATLAS_ARGS), tasks)
  second = _evaluate(AtlasJaxLM.create_from_arg_string(TINY_ATLAS_ARGS), tasks)
  metrics = {(task, name): value for task in tasks for name, value in first[task].items()
             if isinstance(value, float) and not name.endswith("_stderr,none")}
  assert {name for _, name in metrics} >= {"acc,none", "acc_norm,none", "byte_perplexity,none",
                                            "bits_per_byte,none", "word_perplexity,none", "exact_match,none"}
  for (task, name), value in metrics.items():
    assert math.isfinite(value), (task, name, value)
    assert second[task][name] == value, (task, name)
  assert first["toy_ppl"]["byte_perplexity,none"] > 1.0


class _LocalTaskManager(TaskManager):
  """The CLI's TaskManager without lm-eval's built-in task folders (indexing them takes ~10 s)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **dict(kwargs, include_defaults=False))


def test_cli_entry_point_registers_the_model(monkeypatch, capsys):
  from experiments import lm_eval_main

  monkeypatch.setattr(sys, "argv", ["lm_eval_main"])
  monkeypatch.setattr("lm_eval.tasks.TaskManager", _LocalTaskManager)
  lm_eval_main.main(["--model", "atlas-jax", "--model_args", TINY_ATLAS_ARGS, "--tasks", "toy_ppl",
                     "--include_path", TASK_DIR])
  assert "toy_ppl" in capsys.readouterr().out
