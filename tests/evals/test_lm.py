"""LanguageModel streaming scores, greedy generation, perplexity and model loading (atlas_jax/evals/lm.py, ...)."""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atlas_jax.evals.lm import LanguageModel, pieces
from atlas_jax.evals.loading import load_model
from atlas_jax.evals.perplexity import file_perplexity, perplexity, read_eval_file
from atlas_jax.model import AtlasLM
from atlas_jax.sampling import generate
from atlas_jax.training.checkpoint import Checkpointer
from atlas_jax.training.loop import model_config_from
from tests.training import tiny_config

VOCAB = 264  # the tiny training config's vocabulary (so loaded models share the compiled steps)


class CharTokenizer:
  """One character per id (printable ASCII, then Latin-1/Latin Extended-A); the last id is the separator."""

  def __init__(self, vocab_size: int = VOCAB):
    self.vocab_size, self.eos_id = vocab_size, vocab_size - 1
    chars = [chr(c) for c in range(0x20, 0x7F)] + [chr(c) for c in range(0xA1, 0x200)]
    self.chars = chars[:vocab_size - 1]
    self.index = {c: i for i, c in enumerate(self.chars)}

  def encode(self, text):
    return [self.index[c] for c in text]

  def decode(self, ids):
    return "".join(self.chars[i] for i in ids if i < len(self.chars))


def _config(preset: str):
  return model_config_from(tiny_config.get_config(preset))


@pytest.fixture(scope="module")
def models():
  """Tiny random-init ATLAS (memory) and Transformer++ models of the training tests' config."""
  return {name: AtlasLM(_config(name), rngs=nnx.Rngs(0)) for name in ("atlas", "transformer++")}


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward(graphdef, params, tokens):
  return nnx.merge(graphdef, params)(tokens)[0]


def _one_shot(model, ids):
  """log p(ids[i] | ids[:i]) from one full forward pass (jitted: compiled once per model structure and length),
  and its argmax ids."""
  logits = _forward(*nnx.split(model), jnp.asarray(ids, jnp.int32)[None])
  logp = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
  return logp[np.arange(len(ids) - 1), np.asarray(ids[1:])], logp.argmax(-1)


def _ids(n, seed=0):
  return np.random.RandomState(seed).randint(0, VOCAB - 1, size=n).tolist()


def test_pieces_cover_the_length_with_few_distinct_sizes():
  assert pieces(37, 16) == [16, 16, 4, 1]
  assert pieces(13, 16) == [8, 4, 1]
  assert pieces(0, 4) == []
  assert pieces(7, 1) == [1] * 7
  lengths = set()
  for n in range(200):
    parts = pieces(n, 12)
    assert sum(parts) == n
    lengths |= set(parts)
  assert lengths == {12, 8, 4, 2, 1}  # ≤ 1 + ⌊log2 12⌋ compiled shapes
  with pytest.raises(ValueError, match="chunk_size"):
    pieces(3, 0)


# Atlas compiles one step per piece length (seconds each on CPU): the atlas tests below only use lengths that cut
# into pieces of 16, 4 and 1 tokens, and one-shot passes of 37 tokens.
@pytest.mark.parametrize("preset", ["atlas", "transformer++"])
def test_streamed_logprobs_equal_one_shot(models, preset):
  model = models[preset]
  ids = _ids(37)
  expected, _ = _one_shot(model, ids)
  for chunk in (1, 4, 16):
    got = LanguageModel(model, CharTokenizer(), chunk_size=chunk).logprobs(ids)
    assert got.shape == (36,)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0, err_msg=f"chunk_size={chunk}")


def test_loglikelihood_and_is_greedy(models):
  model = models["atlas"]
  lm = LanguageModel(model, CharTokenizer(), chunk_size=4)
  ids = _ids(37, seed=1)
  context, continuation = ids[:32], ids[32:]
  expected, argmax = _one_shot(model, ids)
  total, is_greedy = lm.loglikelihood(context, continuation)
  assert total == pytest.approx(float(np.sum(expected[31:])), abs=1e-4)
  assert is_greedy == bool(np.all(argmax[31:-1] == np.asarray(continuation)))

  greedy = list(lm.greedy_tokens(context, 5))
  assert len(greedy) == 5
  expected, argmax = _one_shot(model, context + greedy)
  assert greedy == argmax[31:-1].tolist()
  total, is_greedy = lm.loglikelihood(context, greedy)
  assert is_greedy
  assert total == pytest.approx(float(np.sum(expected[31:])), abs=1e-4)
  wrong = greedy[:-1] + [(greedy[-1] + 1) % (VOCAB - 1)]
  assert lm.loglikelihood(context, wrong)[1] is False
  # The reused context state gives what a fresh model gives.
  fresh = LanguageModel(model, CharTokenizer(), chunk_size=4)
  assert fresh.loglikelihood(context, wrong)[0] == pytest.approx(lm.loglikelihood(context, wrong)[0], abs=1e-5)
  # An empty context is the separator token.
  assert lm.loglikelihood([], continuation)[0] == pytest.approx(
      lm.loglikelihood([lm.prefix_id], continuation)[0], abs=1e-6)
  with pytest.raises(ValueError, match="continuation_ids is empty"):
    lm.loglikelihood(context, [])
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 264\)"):
    lm.loglikelihood(context, [VOCAB])


def test_rolling_loglikelihood_scores_every_token_after_the_separator(models):
  lm = LanguageModel(models["transformer++"], CharTokenizer(), chunk_size=16)
  ids = _ids(36, seed=3)
  expected, _ = _one_shot(models["transformer++"], [lm.prefix_id] + ids)
  assert lm.rolling_loglikelihood(ids) == pytest.approx(float(np.sum(expected)), abs=1e-4)
  assert lm.rolling_loglikelihood([]) == 0.0


def test_greedy_tokens_match_sampling_generate(models):
  # (Atlas's greedy tokens are checked against the one-shot argmax in test_loglikelihood_and_is_greedy.)
  model = models["transformer++"]
  lm = LanguageModel(model, CharTokenizer(), chunk_size=4)
  prompt = _ids(12, seed=4)
  ours = list(lm.greedy_tokens(prompt, 10))
  theirs = np.asarray(generate(model, jnp.asarray([prompt], jnp.int32), 10, jax.random.PRNGKey(0),
                               temperature=0.0))[0, len(prompt):].tolist()
  stop = theirs.index(lm.prefix_id) if lm.prefix_id in theirs else len(theirs)
  assert ours == theirs[:stop]


def test_generate_cuts_at_the_earliest_stop_string(models):
  lm = LanguageModel(models["atlas"], CharTokenizer(), chunk_size=4)
  prompt = "The quick brown fox "
  full = lm.generate(prompt, 12)
  assert len(full) == 12, full  # one character per token, no separator produced by this model
  assert full == lm.decode(lm.greedy_tokens(lm.encode(prompt), 12))
  stop = full[5:7]
  assert lm.generate(prompt, 12, stop=["never-seen", stop]) == full[:full.find(stop)]
  assert lm.generate(prompt, 12, stop=[full[8], full[3]]) == full[:min(full.find(full[8]), full.find(full[3]))]
  assert lm.generate(prompt, 12, stop="never-seen") == full
  assert lm.generate(prompt, 4) == full[:4]
  assert lm.generate(prompt, 0) == ""


def test_growing_caches_refuse_to_overflow(models):
  lm = LanguageModel(models["transformer++"], CharTokenizer(), chunk_size=4)
  state = lm.start(10)
  assert state.capacity == 64
  lm.feed(state, _ids(60))
  with pytest.raises(ValueError, match="overflows"):
    lm.feed(state, _ids(5))
  assert LanguageModel(models["atlas"], CharTokenizer()).start(10).capacity is None


def test_perplexity_of_a_uniform_model_is_exact(models):
  model = nnx.clone(models["atlas"])
  model.head.kernel[...] = jnp.zeros_like(model.head.kernel[...])  # logits ≡ 0: p = 1/V everywhere
  lm = LanguageModel(model, CharTokenizer(), chunk_size=4)
  text = "In the beginning God created the heaven & the earth."  # 52 characters
  lines = []
  result = perplexity(lm, text=text, block_tokens=16, log=lines.append)
  assert result["tokens"] == len(text) and result["bytes"] == len(text)
  assert result["nats_per_token"] == pytest.approx(math.log(VOCAB), rel=1e-6)
  assert result["perplexity"] == pytest.approx(VOCAB, rel=1e-5)
  assert result["bits_per_byte"] == pytest.approx(math.log2(VOCAB), rel=1e-6)
  assert len(lines) == 4 and lines[-1].startswith(f"perplexity: {len(text)}/{len(text)} tokens")
  short = perplexity(lm, tokens=np.asarray(lm.encode(text)), max_tokens=12, log=None)
  assert short["tokens"] == 12 and "bits_per_byte" not in short
  assert short["perplexity"] == pytest.approx(VOCAB, rel=1e-5)
  with pytest.raises(ValueError, match="exactly one of text= and tokens="):
    perplexity(lm)


def test_perplexity_equals_rolling_loglikelihood_over_documents(models, tmp_path):
  lm = LanguageModel(models["atlas"], CharTokenizer(), chunk_size=4)
  docs = ["Let there be light: and there was light.", "And God saw the light, that it was good."]
  total = sum(lm.rolling_loglikelihood(lm.encode(d)) for d in docs)
  n = sum(len(d) for d in docs)
  result = perplexity(lm, text=docs, block_tokens=8, log=None)  # blocks carry the state across their edges
  assert result["tokens"] == n
  assert result["nats_per_token"] == pytest.approx(-total / n, rel=1e-5)
  assert result["bits_per_byte"] == pytest.approx(-total / n / math.log(2), rel=1e-5)
  cut = perplexity(lm, text=docs, max_tokens=48, log=None)
  first, rest = docs[0], docs[1][:48 - len(docs[0])]
  cut_total = lm.rolling_loglikelihood(lm.encode(first)) + lm.rolling_loglikelihood(lm.encode(rest))
  assert cut["tokens"] == 48 and cut["bytes"] == 48
  assert cut["nats_per_token"] == pytest.approx(-cut_total / 48, rel=1e-5)

  # The file reader: .txt (one text), .jsonl (documents), .npy (tokens).
  (tmp_path / "a.txt").write_text(docs[0])
  (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n\n")
  np.save(tmp_path / "a.npy", np.asarray(lm.encode(docs[0]), np.uint16))
  assert read_eval_file(str(tmp_path / "a.jsonl")) == docs
  assert file_perplexity(lm, str(tmp_path / "a.jsonl"), log=None)["nats_per_token"] == pytest.approx(
      result["nats_per_token"], rel=1e-6)
  from_text = file_perplexity(lm, str(tmp_path / "a.txt"), log=None)
  from_tokens = file_perplexity(lm, str(tmp_path / "a.npy"), log=None)
  assert from_tokens["nats_per_token"] == pytest.approx(from_text["nats_per_token"], rel=1e-6)
  (tmp_path / "bad.jsonl").write_text('{"txt": "no text field"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a JSON object with a 'text' field"):
    read_eval_file(str(tmp_path / "bad.jsonl"))
  (tmp_path / "a.csv").write_text("x")
  with pytest.raises(ValueError, match="expected .txt, .jsonl or .npy"):
    read_eval_file(str(tmp_path / "a.csv"))
  with pytest.raises(FileNotFoundError, match="evaluation file not found"):
    read_eval_file(str(tmp_path / "missing.txt"))


def test_load_preset():
  model, tokenizer, info = load_model(preset="transformer++", size="tiny", overrides=dict(width=32, num_heads=2,
                                                                                             mlp_hidden=64))
  assert model.config.vocab_size == 257 and tokenizer.vocab_size == 257  # raised to the byte tokenizer's
  assert model.config.width == 32 and model.config.blocks == ("attention", "attention")
  assert info["source"] == "preset" and info["num_params"] > 0
  with pytest.raises(ValueError, match="the tokenizer has 257 ids but the model of preset='atlas' has vocab_size 100"):
    load_model(preset="atlas", overrides=dict(vocab_size=100))
  with pytest.raises(ValueError, match="unknown model override keys: \\['widht'\\]"):
    load_model(preset="atlas", overrides=dict(widht=32))
  with pytest.raises(ValueError, match="exactly one of workdir= and preset="):
    load_model()


def _write_workdir(workdir, params_by_step):
  """A workdir as train_and_evaluate leaves it: <workdir>/checkpoints/<step> with params and meta."""
  config = tiny_config.get_config()
  meta = {"model_config": model_config_from(config).to_dict(), "experiment": json.loads(config.to_json()),
          "data_state": {}}
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False, keep=10)
  for step, params in params_by_step.items():
    checkpointer.save(step, params, {"count": np.zeros((), np.int32)}, meta, force=True)
  checkpointer.close()


def _trained_params(model, step):
  """Parameters unlike the init (a stand-in for `step` training steps)."""
  model = nnx.clone(model)
  model.embed[...] = model.embed[...] * (1.0 + 0.1 * step)
  model.head.kernel[...] = model.head.kernel[...] - 0.01 * step
  return nnx.split(model)[1]


def test_load_workdir_gives_the_saved_parameters(tmp_path, models):
  trained = {step: _trained_params(models["atlas"], step) for step in (3, 5)}
  _write_workdir(str(tmp_path), trained)
  ids = _ids(21, seed=5)
  for step, expect_step in ((None, 5), (3, 3)):
    model, tokenizer, info = load_model(workdir=str(tmp_path), step=step)
    assert info["step"] == expect_step and info["source"] == "workdir"
    assert tokenizer.vocab_size == VOCAB and tokenizer.eos_id == 256  # the run's byte tokenizer
    graphdef, params = nnx.split(model)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(trained[expect_step])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The restored arrays are committed to one device, which would recompile every step; the same values
    # uncommitted share the compiled steps of the other tests.
    loaded = nnx.merge(graphdef, jax.tree_util.tree_map(jnp.asarray, jax.device_get(params)))
    reference = nnx.merge(nnx.split(models["atlas"])[0], trained[expect_step])
    got = LanguageModel(loaded, tokenizer, chunk_size=16).logprobs(ids)
    np.testing.assert_array_equal(got, LanguageModel(reference, tokenizer, chunk_size=16).logprobs(ids))


def test_bad_workdirs_raise_clear_errors(tmp_path, models):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_model(workdir=str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="has no checkpoints/ folder"):
    load_model(workdir=str(tmp_path))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    load_model(workdir=str(tmp_path))
  _write_workdir(str(tmp_path), {2: nnx.split(models["atlas"])[1]})
  with pytest.raises(ValueError, match=r"step=7 has no checkpoint .* saved steps: \[2\]"):
    load_model(workdir=str(tmp_path), step=7)
  with pytest.raises(ValueError, match="the tokenizer has 300 ids but the model of workdir=.* has vocab_size 264"):
    load_model(workdir=str(tmp_path), tokenizer=CharTokenizer(300))
  with pytest.raises(ValueError, match="apply to presets only"):
    load_model(workdir=str(tmp_path), overrides={"width": 8})


@pytest.mark.slow
def test_load_workdir_of_a_real_training_run(tmp_path):
  from atlas_jax.training.loop import train_and_evaluate

  config = tiny_config.get_config()
  with config.unlocked():
    config.train.steps, config.train.eval_every, config.train.eval_batches = 2, 2, 1
  train_and_evaluate(config, str(tmp_path))
  model, tokenizer, info = load_model(workdir=str(tmp_path))
  assert info["step"] == 2
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  import orbax.checkpoint as ocp

  trained = checkpointer.manager.restore(2, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
  checkpointer.close()
  reference = nnx.merge(nnx.split(model)[0], jax.tree_util.tree_map(np.asarray, trained))
  ids = tokenizer.encode("In the beginning")
  expected, _ = _one_shot(reference, ids)
  lm = LanguageModel(model, tokenizer, chunk_size=16)
  np.testing.assert_allclose(lm.logprobs(ids), expected, atol=2e-5)
  assert np.isfinite(perplexity(lm, text="And the earth was without form", log=None)["perplexity"])
