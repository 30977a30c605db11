"""RULER S-NIAH generator, scorer and runner (EVALS_NOTES.md §2): lengths, needle placement, template, keys."""

from __future__ import annotations

import json
import os
import random
import re
import uuid

import numpy as np
import pytest

from atlas_jax.evals import niah, prose
from atlas_jax.training.tokenizers import ByteTokenizer
from tests.evals.fakes import WordTokenizer


TOKENIZERS = {"byte": ByteTokenizer, "word": WordTokenizer}
TASK_NAMES = tuple(niah.TASKS)


def _samples(task, length, n=4, tokenizer=None, **kw):
  return list(niah.make_niah_samples(task, length, n, tokenizer or ByteTokenizer(), **kw))


def _context(sample):
  """The haystack with the needle: between the first line of the template and the question line."""
  head, rest = sample.input.split("\n", 1)
  context, question = rest.rsplit("\n", 1)
  return head, context, question


# -------------------------------------------------------------------------------------- template


@pytest.mark.parametrize("task,noun", [("niah_single_1", "number"), ("niah_single_2", "number"),
                                       ("niah_single_3", "uuid")])
def test_template_text_is_ruler_single_needle_rewrite(task, noun):
  s = _samples(task, 2048, n=1)[0]
  head, _, question = _context(s)
  assert head == (f"A special magic {noun} is hidden within the following text. Make sure to memorize it. "
                  f"I will quiz you about the {noun} afterwards.")
  assert question == f"What is the special magic {noun} for {s.key} mentioned in the provided text?"
  assert s.answer_prefix == f" The special magic {noun} for {s.key} mentioned in the provided text is"
  assert s.prompt == s.input + s.answer_prefix
  (value,) = s.answers
  assert s.needle == f"One of the special magic {noun}s for {s.key} is: {value}."


def test_values_are_seven_digit_numbers_and_uuid4():
  for s in _samples("niah_single_1", 1024, n=6):
    assert re.fullmatch(r"[1-9]\d{6}", s.answers[0])
  for s in _samples("niah_single_3", 2048, n=6):
    assert len(s.answers[0]) == 36 and uuid.UUID(s.answers[0]).version == 4


# -------------------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("tokenizer_name", sorted(TOKENIZERS))
@pytest.mark.parametrize("task", TASK_NAMES)
def test_lengths_fit_the_target_and_come_close(task, tokenizer_name):
  tok = TOKENIZERS[tokenizer_name]()
  length = 3000 if tokenizer_name == "byte" else 1000
  ttg = 64
  unit = len(tok.encode(niah.NOISE_UNIT + "\n")) if task == "niah_single_1" else len(tok.encode(" consecrated"))
  slack = 3 * len(tok.encode(" " + "w" * 40)) + 2 * unit  # keys differ in length; the last unit may not fit
  for s in _samples(task, length, n=5, tokenizer=tok, tokens_to_generate=ttg):
    assert s.token_length == len(tok.encode(s.prompt))
    assert s.token_length + ttg <= length
    assert s.token_length + ttg > length - slack, (s.token_length, length, slack)


def test_too_short_length_raises_with_the_length():
  with pytest.raises(ValueError, match="length=300"):
    _samples("niah_single_1", 300, n=1, tokens_to_generate=128)
  with pytest.raises(ValueError, match="tokens_to_generate"):
    _samples("niah_single_1", 100, n=1)
  with pytest.raises(ValueError, match="unknown NIAH task"):
    _samples("niah_single_9", 2048, n=1)


# -------------------------------------------------------------------------------------- needle


@pytest.mark.parametrize("depth", [0, 25, 50, 100])
def test_noise_needle_once_at_requested_unit(depth):
  for s in _samples("niah_single_1", 4096, n=2, depths=[depth]):
    _, context, _ = _context(s)
    lines = context.split("\n")
    assert lines.count(s.needle) == 1 and s.prompt.count(s.needle) == 1
    assert lines.index(s.needle) == int(s.haystack_size * depth / 100)
    assert [line for line in lines if line != s.needle] == [niah.NOISE_UNIT] * s.haystack_size
    assert s.depth == depth


@pytest.mark.parametrize("task", ["niah_single_2", "niah_single_3"])
@pytest.mark.parametrize("depth", [0, 30, 100])
def test_essay_needle_once_after_the_requested_sentence(task, depth):
  for s in _samples(task, 12000, n=2, depths=[depth]):
    _, context, _ = _context(s)
    assert context.count(s.needle) == 1 and s.prompt.count(s.answers[0]) == 1
    sentences = prose.split_sentences(prose.first_words(s.haystack_size).strip())
    pos = int(len(sentences) * depth / 100)
    before, after = context.split(s.needle)
    assert before == " ".join(sentences[:pos]) + " " and after == " " + " ".join(sentences[pos:])
    assert abs(len(before) / len(context) - depth / 100) < 0.05  # sentence granularity


def test_random_depths_follow_ruler():
  depths = [s.depth for s in _samples("niah_single_2", 2048, n=8)]
  assert all(d in niah.DEPTHS for d in depths) and len(set(depths)) > 1
  noise = [s.depth for s in _samples("niah_single_1", 4096, n=8)]
  assert all(0 <= d < 100 for d in noise) and len(set(noise)) > 1
  assert len(niah.DEPTHS) == 40 and niah.DEPTHS[0] == 0 and niah.DEPTHS[-1] == 100 and niah.DEPTHS[1] == 3


def test_fewer_samples_than_depths_spread_over_all_depths():
  depths = [s.depth for s in niah.make_niah_samples("niah_single_1", 1024, 10, ByteTokenizer(),
                                                    depths=niah.DEPTHS)]
  assert depths == [niah.DEPTHS[4 * i] for i in range(10)] and depths[-1] >= 90


def test_determinism_by_seed_and_same_needles_across_lengths():
  a = _samples("niah_single_2", 2048, n=3, seed=7)
  assert a == _samples("niah_single_2", 2048, n=3, seed=7)
  b = _samples("niah_single_2", 2048, n=3, seed=8)
  assert [s.key for s in a] != [s.key for s in b]
  longer = _samples("niah_single_2", 4096, n=3, seed=7)
  assert [(s.key, s.answers) for s in a] == [(s.key, s.answers) for s in longer]


def test_samples_are_generated_lazily():
  gen = niah.make_niah_samples("niah_single_1", 2048, 10 ** 9, ByteTokenizer())
  assert next(gen).index == 0 and next(gen).index == 1


# -------------------------------------------------------------------------------------- keys


def test_keys_come_from_the_wonderwords_lists():
  import wonderwords.random_word as ww

  adjectives = set(ww._get_words_from_text_file("adjectivelist.txt"))
  nouns = set(ww._get_words_from_text_file("nounlist.txt"))
  keys = niah.default_keys()
  assert len(keys) == len(adjectives) * len(nouns) == 910 * 6782
  for s in _samples("niah_single_1", 1024, n=20):
    assert any(s.key[:i] in adjectives and s.key[i + 1:] in nouns for i, c in enumerate(s.key) if c == "-")
    assert s.key in keys


def test_key_indexing_equals_the_explicit_sorted_set():
  adjectives = ["blue", "blue-eyed", "red", "old", "old-fashioned", "bold", "wet", "wet", "x-rated", "x"]
  nouns = ["ATM", "eyed", "eyed-cat", "apple", "zebra", "e-mail", "fashioned"]
  explicit = sorted({f"{a}-{n}" for a in adjectives for n in nouns})
  keys = niah.WonderwordsKeys(adjectives, nouns)
  assert len(keys) == len(explicit) and [keys[i] for i in range(len(keys))] == explicit
  with pytest.raises(IndexError):
    keys[len(keys)]


def test_real_key_list_is_sorted_around_prefix_groups():
  keys = niah.default_keys()
  rng = random.Random(0)
  starts = [rng.randrange(len(keys) - 50) for _ in range(200)] + [0, len(keys) - 60]
  for anchor in ("blue-ATM", "old-fashioned-ATM", "wet-ATM"):
    lo, hi = 0, len(keys)  # binary search: the list must be sorted for this to find the anchor
    while lo < hi:
      mid = (lo + hi) // 2
      lo, hi = (mid + 1, hi) if keys[mid] < anchor else (lo, mid)
    assert keys[lo] == anchor
    starts.append(max(0, lo - 30))
  for start in starts:
    window = [keys[i] for i in range(start, start + 50)]
    assert window == sorted(window) and len(set(window)) == 50


# -------------------------------------------------------------------------------------- scoring


def test_string_match_all_on_hand_made_predictions():
  refs = [["1234567"], ["7654321"], ["a1b2C3d4-0000-4000-8000-000000000000"], ["1111111", "2222222"]]
  preds = [" The number is 1234567.", "I do not know", "A1B2c3d4-0000-4000-8000-000000000000", "2222222 only"]
  assert niah.string_match_all(preds, refs) == pytest.approx(100 * (1 + 0 + 1 + 0.5) / 4)
  assert niah.sample_match_all("\x00 123\x01 4567 ", ["1234567"]) == 0.0  # control chars break the match
  assert niah.postprocess_prediction("  12\x0734 \t") == "12\n34"
  assert niah.string_match_all(["x"], [["x"]]) == 100.0
  with pytest.raises(ValueError, match="predictions"):
    niah.string_match_all(["a"], [])
  with pytest.raises(TypeError, match="wrap it"):  # a bare string would score character by character
    niah.string_match_all(["The number is 1."], ["1234567"])


def test_run_niah_refuses_random_depths_before_generating(tmp_path):
  calls = []
  with pytest.raises(ValueError, match="depth × length grid"):
    niah.run_niah(lambda p, n: calls.append(p) or "", ByteTokenizer(), ["niah_single_1"], [1024], 2,
                  str(tmp_path), depths=None)
  assert not calls


# -------------------------------------------------------------------------------------- runner


def _cheat(prompt: str, max_new_tokens: int) -> str:
  return " " + re.search(r"is: (\S+)\.\n?", prompt).group(1) + "."


def test_run_niah_end_to_end(tmp_path):
  calls = []

  def cheat(prompt, max_new_tokens):
    calls.append(max_new_tokens)
    return _cheat(prompt, max_new_tokens)

  lengths, depths = [1024, 2048], [0, 50, 100]
  tasks = ["niah_single_1", "S-NIAH-3"]
  out = niah.run_niah(cheat, ByteTokenizer(), tasks, lengths, 4, str(tmp_path / "good"), log=lambda s: None,
                      depths=depths, tokens_to_generate=32)
  assert set(calls) == {32} and len(calls) == 2 * 2 * 4
  for name in ("niah_single_1", "niah_single_3"):
    assert out[name]["score"] == 100.0
    for suffix in (".json", ".md", "_heatmap.png"):
      assert os.path.getsize(tmp_path / "good" / (name + suffix)) > 0
    with open(tmp_path / "good" / (name + ".json")) as f:
      data = json.load(f)
    assert len(data["samples"]) == 8 and np.shape(data["score_by_depth_and_length"]) == (3, 2)
    assert data["depths"] == [0.0, 50.0, 100.0]
    with open(tmp_path / "good" / (name + "_heatmap.png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert prose.SUBSTITUTION in open(tmp_path / "good" / "niah_single_3.md").read()

  logs = []
  out = niah.run_niah(lambda p, n: "", ByteTokenizer(), ["niah_single_2"], [1024], 3, str(tmp_path / "bad"),
                      log=logs.append, depths=[10, 90], tokens_to_generate=16)
  assert out["niah_single_2"]["score"] == 0.0 and out["niah_single_2"]["score_by_length"] == {"1024": 0.0}
  assert len(logs) == 1 and "S-NIAH-2" in logs[0]
  md = open(tmp_path / "bad" / "niah_single_2.md").read()
  assert "| 10 | 0.0 |" in md and "| 90 | 0.0 |" in md
