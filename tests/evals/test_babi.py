"""bAbI qa1–qa5 generator (checked by an independent text-level solver), v1.2 format, BABILong hiding and metrics."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest

from atlas_jax.evals import babi, babilong, prose
from atlas_jax.training.tokenizers import ByteTokenizer
from tests.evals.fakes import WordTokenizer

# ------------------------------------------------------------------------- independent solver (text only)

_MOVE = re.compile(r"^(\w+) (?:moved|went|went back|journeyed|travelled) to the (\w+)\.$")
_GET = re.compile(r"^(\w+) (?:got|picked up|grabbed|took) the (\w+)(?: there)?\.$")
_DROP = re.compile(r"^(\w+) (?:dropped|put down|discarded|left) the (\w+)(?: there)?\.$")
_GIVE = re.compile(r"^(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.$")
_REL = re.compile(r"^The (\w+) is (north|south|east|west) of the (\w+)\.$")
_OPP = {"north": "south", "south": "north", "east": "west", "west": "east"}


def solve(facts, question):
  """Re-reads the facts as text, checks the world rules, and answers the question: (answer, support set)."""
  where = {}  # actor -> (location, fact index of the move)
  holder = {}  # object -> (actor, fact index of the get or None after a give)
  floor = {}  # object -> (location, drop index, dropper's move index)
  history = {}  # object -> [(location, evidence)]
  gives, relations = [], []
  for i, fact in enumerate(facts):
    if m := _MOVE.match(fact):
      x, loc = m.groups()
      assert where.get(x, (None,))[0] != loc, f"move to the same place: {fact}"
      for o, (h, got) in holder.items():
        if h == x and x in where and got is not None:  # qa3's location history (gets by located actors)
          history.setdefault(o, []).append((loc, {i, where[x][1], got}))
      where[x] = (loc, i)
    elif m := _GET.match(fact):
      x, o = m.groups()
      assert o not in holder, f"{fact}: the {o} is held by {holder.get(o)}"
      if o in floor and x in where:
        assert floor[o][0] == where[x][0], f"{fact}: the {o} is in the {floor[o][0]}"
      holder[o] = (x, i)
      floor.pop(o, None)
      if not history.get(o) and x in where:
        history.setdefault(o, []).append((where[x][0], {i, where[x][1]}))
    elif m := _DROP.match(fact):
      x, o = m.groups()
      assert holder.get(o, (None,))[0] == x, f"{fact}: {x} does not hold the {o}"
      del holder[o]
      if x in where:
        floor[o] = (where[x][0], i, where[x][1])
    elif m := _GIVE.match(fact):
      x, o, y = m.groups()
      assert holder.get(o, (None,))[0] == x and y != x, fact
      if x in where and y in where:
        assert where[x][0] == where[y][0], f"{fact}: {x} and {y} are apart"
      holder[o] = (y, None)
      gives.append((i, x, o, y))
    elif m := _REL.match(fact):
      x, d, y = m.groups()
      relations += [(x, d, y, i), (y, _OPP[d], x, i)]
    else:
      raise AssertionError(f"unknown fact form: {fact!r}")

  if m := re.fullmatch(r"Where is ([A-Z]\w+)\?", question):
    loc, i = where[m.group(1)]
    return loc, {i}
  if m := re.fullmatch(r"Where is the (\w+)\?", question):
    o = m.group(1)
    if o in holder:
      x, got = holder[o]
      return where[x][0], {got, where[x][1]}
    loc, drop, move = floor[o]
    return loc, {drop, move}
  if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
    o, place = m.groups()
    places = [loc for loc, _ in history[o]]
    assert places.count(place) == 1
    k = places.index(place)
    assert k >= 1
    return places[k - 1], history[o][k][1]
  if m := re.fullmatch(r"What is (north|south|east|west) of the (\w+)\?", question):
    found = {(x, i) for x, d, y, i in relations if d == m.group(1) and y == m.group(2)}
  elif m := re.fullmatch(r"What is the (\w+) (north|south|east|west) of\?", question):
    found = {(y, i) for x, d, y, i in relations if x == m.group(1) and d == m.group(2)}
  else:
    found = None
  if found is not None:
    assert len(found) == 1, (question, found)
    (answer, i), = found
    return answer, {i}
  forms = [(r"What did (\w+) give to (\w+)\?", lambda g, x, y: g[1] == x and g[3] == y, 2),
           (r"Who gave the (\w+) to (\w+)\?", lambda g, o, y: g[2] == o and g[3] == y, 1),
           (r"Who did (\w+) give the (\w+) to\?", lambda g, x, o: g[1] == x and g[2] == o, 3),
           (r"Who received the (\w+)\?", lambda g, o: g[2] == o, 3),
           (r"Who gave the (\w+)\?", lambda g, o: g[2] == o, 1)]
  for pattern, matches, field in forms:
    if m := re.fullmatch(pattern, question):
      last = [g for g in gives if matches(g, *m.groups())][-1]
      return last[field], {last[0]}
  raise AssertionError(f"unknown question form: {question!r}")


# ------------------------------------------------------------------------------------------ bAbI


@pytest.mark.parametrize("task", babi.TASKS)
def test_answers_and_support_agree_with_independent_solver(task):
  actors = babi.ACTORS_QA5 if task == "qa5" else babi.ACTORS
  count = 0
  for episode in babi.make_babi_episodes(task, 40, seed=3):
    for line in episode:
      if line.is_question:
        assert list(line.support) == sorted(line.support, reverse=True)  # most recent first
    for s in babi.episode_samples(episode, task):
      answer, support = solve(s.facts, s.question)
      assert s.answer == answer, (s.facts, s.question)
      assert set(s.supporting) == support and len(s.supporting) == len(support)
      assert len(s.supporting) == {"qa1": 1, "qa2": 2, "qa3": 3, "qa4": 1, "qa5": 1}[task]
      words = {w for f in s.facts for w in re.findall(r"\b[A-Z][a-z]+\b", f)} - {"The"}
      assert words <= set(actors)
      count += 1
  assert count >= 40


def test_episode_shapes():
  for episode in babi.make_babi_episodes("qa1", 5, seed=0):
    assert len(episode) == 15 and [l.number for l in episode if l.is_question] == [3, 6, 9, 12, 15]
  for episode in babi.make_babi_episodes("qa4", 5, seed=0):
    assert len(episode) == 3 and episode[2].is_question
  for task in ("qa2", "qa3", "qa5"):
    for episode in babi.make_babi_episodes(task, 10, seed=0):
      assert 1 <= sum(l.is_question for l in episode) <= babi.MAX_QUESTIONS
      assert [l.number for l in episode] == list(range(1, len(episode) + 1))


def test_qa3_asks_about_earlier_locations_and_qa4_inverts_relations():
  qa3 = list(babi.make_babi_samples("qa3", 200, seed=1))
  asked = [re.fullmatch(r"Where was the (\w+) before the (\w+)\?", s.question).groups() + (s,) for s in qa3]
  earlier = [place != solve(s.facts, f"Where is the {o}?")[0] for o, place, s in asked]
  assert any(earlier) and not all(earlier)  # current and earlier locations are both asked about
  qa4 = list(babi.make_babi_samples("qa4", 200, seed=1))
  forms = {re.sub(r"(bathroom|bedroom|garden|hallway|kitchen|office)", "L", s.question) for s in qa4}
  assert len(forms) == 8  # 4 directions × 2 phrasings
  direction = re.compile(r"north|south|east|west")
  inverted = [direction.search(s.question).group() != direction.search(s.facts[s.supporting[0]]).group()
              for s in qa4]
  assert any(inverted) and not all(inverted)  # some questions need the stated relation turned round


def test_determinism_by_seed():
  a = list(babi.make_babi_episodes("qa5", 3, seed=5))
  assert a == list(babi.make_babi_episodes("qa5", 3, seed=5))
  assert a != list(babi.make_babi_episodes("qa5", 3, seed=6))
  assert len(list(babi.make_babi_samples("qa2", 17, seed=5))) == 17


@pytest.mark.parametrize("task", babi.TASKS)
def test_v12_format_round_trips(task, tmp_path):
  episodes = list(babi.make_babi_episodes(task, 4, seed=2))
  text = babi.format_babi(episodes)
  assert babi.parse_babi(text) == episodes
  path = tmp_path / f"{task}.txt"
  path.write_text(text)
  assert babi.format_babi(babi.load_babi_file(str(path))) == text
  question_lines = [l for l in text.splitlines() if "\t" in l]
  assert all(re.fullmatch(r"\d+ [^\t]+\? \t\w+\t\d+( \d+)*", l) for l in question_lines)


def test_real_v12_fragment_parses():
  text = ("1 Fred picked up the football there.\n2 Fred gave the football to Jeff.\n"
          "3 What did Fred give to Jeff? \tfootball\t2\n1 Mary moved to the bathroom.\n"
          "2 John went to the hallway.\n3 Where is Mary? \tbathroom\t1\n")
  episodes = babi.parse_babi(text)
  assert len(episodes) == 2
  (s,) = babi.episode_samples(episodes[0], "qa5")
  assert s.facts == ("Fred picked up the football there.", "Fred gave the football to Jeff.")
  assert (s.question, s.answer, s.supporting) == ("What did Fred give to Jeff?", "football", (1,))
  assert solve(s.facts, s.question) == ("football", {1})
  with pytest.raises(ValueError, match="cites lines"):
    babi.episode_samples(babi.parse_babi("1 Where is Mary? \tbathroom\t1\n")[0])


# ------------------------------------------------------------------------------------------ BABILong

FACTS = ["Mary moved to the bathroom.", "John went to the hallway.", "Mary got the milk there.",
         "Mary travelled to the office."]


@pytest.mark.parametrize("tokenizer", [ByteTokenizer(), WordTokenizer()], ids=["byte", "word"])
def test_hide_facts_exact_budget_order_and_intact_facts(tokenizer):
  budget = sum(len(tokenizer.encode(" " + f)) for f in FACTS) + (1500 if isinstance(tokenizer, ByteTokenizer)
                                                                   else 400)
  text, count = babilong.hide_facts(FACTS, budget, tokenizer, seed=1)
  assert count == budget and len(tokenizer.encode(text)) == budget
  positions = [text.index(" " + f) for f in FACTS]
  assert positions == sorted(positions) and all(text.count(f) == 1 for f in FACTS)
  assert text == babilong.hide_facts(FACTS, budget, tokenizer, seed=1)[0]
  assert text != babilong.hide_facts(FACTS, budget, tokenizer, seed=2)[0]


def test_hide_facts_only_between_background_sentences():
  tok = ByteTokenizer()
  background = [f"Background sentence number {i:03d} is long enough." for i in range(200)] + ["short."]
  budget = sum(len(tok.encode(" " + f)) for f in FACTS) + 10 * 45 + 20
  text, _ = babilong.hide_facts(FACTS, budget, tok, seed=0, sentences=iter(["tiny."] + background))
  rest = text
  for f in FACTS:
    rest = rest.replace(" " + f, "", 1)
  # What is left is the background in order, minus the skipped short sentence, the last one cut to the budget.
  full = "".join(" " + s for s in background[:11])
  assert rest == full[:len(rest)] and len(rest) == 10 * 45 + 20 and "tiny" not in text


def test_hide_facts_length_zero_and_too_small():
  tok = ByteTokenizer()
  assert babilong.hide_facts(FACTS, 0, tok) == ("".join(" " + f for f in FACTS), sum(len(f) + 1 for f in FACTS))
  with pytest.raises(ValueError, match="num_tokens=20"):
    babilong.hide_facts(FACTS, 20, tok)


def test_make_babilong_samples_lengths_and_same_questions():
  tok = ByteTokenizer()
  short = list(babilong.make_babilong_samples("qa1", 2000, 3, tok, prompt_reserve=100))
  long = list(babilong.make_babilong_samples("qa1", 6000, 3, tok, prompt_reserve=100))
  zero = list(babilong.make_babilong_samples("qa1", 0, 3, tok))
  assert [s.question for s in short] == [s.question for s in long] == [s.question for s in zero]
  for s in short + long:
    assert s.num_tokens == s.length - 100 == len(tok.encode(s.input))
    assert len(tok.encode(s.prompt)) <= s.length
    assert s.prompt.endswith(f"\n\nQuestion: {s.question}\nAnswer:")
    assert solve(s.facts, s.question)[0] == s.target
    positions = [s.input.index(f) for f in s.facts]
    assert positions == sorted(positions)
  assert zero[0].input == "".join(" " + f for f in zero[0].facts)
  assert short == list(babilong.make_babilong_samples("qa1", 2000, 3, tok, prompt_reserve=100))
  with pytest.raises(ValueError, match="prompt_reserve"):
    next(babilong.make_babilong_samples("qa1", 200, 1, tok))


def test_run_babilong_asks_the_same_questions_at_every_length(tmp_path):
  """qa3's stories are long: at 1,024 tokens many do not fit, and the longer lengths must skip them too."""
  tok = ByteTokenizer()
  out = babilong.run_babilong(lambda prompt, n: " kitchen", tok, ["qa3"], [0, 4096, 1024], 6, str(tmp_path),
                              log=lambda s: None)
  records = json.load(open(tmp_path / "babilong.json"))["samples"]
  indices = {length: [r["index"] for r in records if r["length"] == length] for length in (0, 1024, 4096)}
  assert indices[0] == indices[1024] == indices[4096] and len(indices[0]) == 6
  assert indices[0] != list(range(6))  # some stories were skipped at every length
  assert "1024 tokens" in out["questions"]
  with pytest.raises(ValueError, match="fit_length"):
    next(babilong.make_babilong_samples("qa3", 1024, 1, tok, fit_length=2048))


def test_label_metric_on_hand_made_outputs():
  m = babilong.label_match
  assert m("The most recent location of Mary is kitchen.", "kitchen", "Where is Mary?", "qa1")
  assert m(" Kitchen. Then the garden.", "kitchen", "Where is Mary?", "qa1")  # first sentence only
  assert not m("kitchen or garden", "kitchen", "Where is Mary?", "qa1")
  assert not m("garden", "kitchen", "Where is Mary?", "qa1")
  # A label that also appears in the question is never counted.
  assert m("The office is north of the kitchen.", "office", "What is north of the kitchen?", "qa4")
  assert not m("the kitchen", "kitchen", "What is the kitchen north of?", "qa4")
  assert m("Fred <context> Jeff", "fred", "Who gave the milk?", "qa5")
  assert m("Bill\nQuestion: where is Mary", "Bill", "Who received the apple?", "qa5")
  assert not m("Bill and Mary", "Bill", "Who received the apple?", "qa5")
  assert m("apple and milk", "apple,milk", "What is carried?", labels=("apple", "milk", "football"))
  assert not m("apple", "apple,milk", "What is carried?", labels=("apple", "milk", "football"))
  with pytest.raises(ValueError, match="label set"):
    m("x", "y", "z", "qa99")


def test_exact_match():
  assert babilong.exact_match(" kitchen.\nQuestion: where", "kitchen")
  assert babilong.exact_match("Kitchen", "kitchen")
  assert not babilong.exact_match("the kitchen", "kitchen")
  assert not babilong.exact_match("", "kitchen")


def test_loader_reads_json_jsonl_and_parquet(tmp_path):
  rows = [{"input": "Mary moved to the bathroom.", "question": "Where is Mary?", "target": "bathroom"},
          {"input": "John went to the garden.", "question": "Where is John?", "target": "garden"}]
  (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  (tmp_path / "b.json").write_text(json.dumps(rows))
  (tmp_path / "c.json").write_text(json.dumps({"qa1": rows, "qa2": []}))
  (tmp_path / "d.json").write_text(json.dumps({k: [r[k] for r in rows] for k in rows[0]}))
  for name in ("a.jsonl", "b.json", "c.json", "d.json"):
    samples = babilong.load_babilong_file(str(tmp_path / name), "qa1", "1k")
    assert [(s.input, s.question, s.target, s.length) for s in samples] == [
        (r["input"], r["question"], r["target"], "1k") for r in rows]
  (tmp_path / "bad.jsonl").write_text(json.dumps({"input": "x"}) + "\n")
  with pytest.raises(ValueError, match="lacks"):
    babilong.load_babilong_file(str(tmp_path / "bad.jsonl"), "qa1")
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq

  pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "e.parquet"))
  assert [s.target for s in babilong.load_babilong_file(str(tmp_path / "e.parquet"), "qa1")] == ["bathroom",
                                                                                                  "garden"]


def test_run_babilong_end_to_end(tmp_path):
  tok = ByteTokenizer()
  lengths, n = [0, 1500], 4
  answers = {}
  for task in ("qa1", "qa4"):
    for length in lengths:
      for s in babilong.make_babilong_samples(task, length, n, tok, prompt_reserve=100):
        answers[s.prompt] = s.target
  calls = []

  def oracle(prompt, max_new_tokens):
    calls.append(max_new_tokens)
    return f" {answers[prompt]}.\nQuestion: something"

  out = babilong.run_babilong(oracle, tok, ["qa1", "qa4"], lengths, n, str(tmp_path / "good"),
                              log=lambda s: None, prompt_reserve=100)
  assert set(calls) == {babilong.MAX_NEW_TOKENS} and len(calls) == 2 * 2 * n
  assert set(out["label_accuracy"].values()) == {100.0} and set(out["exact_match"].values()) == {100.0}
  for name in ("babilong.json", "babilong.md", "babilong_accuracy.png"):
    assert os.path.getsize(tmp_path / "good" / name) > 0
  data = json.load(open(tmp_path / "good" / "babilong.json"))
  assert len(data["samples"]) == 16 and data["background"] == prose.SUBSTITUTION
  assert "| qa4 | 100.0 | 100.0 |" in open(tmp_path / "good" / "babilong.md").read()

  (tmp_path / "real.jsonl").write_text(json.dumps({"input": "Mary moved to the office.", "question":
                                                   "Where is Mary?", "target": "office"}) + "\n")
  answers[babilong.make_prompt("Mary moved to the office.", "Where is Mary?")] = "office"
  real = babilong.run_babilong(oracle, tok, ["qa1"], [], n, str(tmp_path / "real"), log=lambda s: None,
                               data_files={("qa1", "1k"): str(tmp_path / "real.jsonl")})
  assert real["label_accuracy"] == {"qa1/1k": 100.0}
  # A file for one task leaves that length empty for the others; generated lengths run for every task.
  mixed = babilong.run_babilong(lambda p, k: "", tok, ["qa1", "qa4"], [0], 1, str(tmp_path / "mixed"),
                                log=lambda s: None, data_files={("qa1", "1k"): str(tmp_path / "real.jsonl")})
  assert mixed["lengths"] == [0, "1k"] and math.isnan(mixed["label_accuracy"]["qa4/1k"])
  assert mixed["label_accuracy"]["qa1/1k"] == 0.0 and mixed["label_accuracy"]["qa4/0"] == 0.0

  silent = babilong.run_babilong(lambda p, k: "", tok, ["qa1"], [0], n, str(tmp_path / "bad"), log=lambda s: None)
  assert silent["label_accuracy"] == {"qa1/0": 0.0} and silent["exact_match"] == {"qa1/0": 0.0}
  with pytest.raises(ValueError, match="label"):
    babilong.run_babilong(oracle, tok, ["qa1"], ["1k"], n, str(tmp_path / "x"), log=lambda s: None)


def test_sentence_sampler_cycles_from_random_offsets():
  text = "One sentence here. " * 5 + "Another one there. " * 5 + "Last words now."
  sampler = iter(prose.SentenceSampler(np.random.default_rng(0), text=text, window_chars=1000))
  got = [next(sampler) for _ in range(100)]  # far more than the text holds: it cycles
  assert set(got) <= {"One sentence here.", "Another one there.", "Last words now."}
  assert prose.SentenceSampler(1).start != prose.SentenceSampler(2).start
  assert prose.first_words(3, text="a b c d") == "a b c" and prose.first_words(6, text="a b c d") == "a b c d a b"
