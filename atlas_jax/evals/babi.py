"""Rule-based bAbI qa1–qa5 generator (a small world simulation), the bAbI v1.2 text format, one-question samples.

Implements EVALS_NOTES.md §3.3–3.4 (own code, written from that description of the bAbI world rules of
``facebookarchive/bAbI-tasks`` and the released v1.2 data): entities, surface forms (chosen uniformly),
validity rules, and answers and supporting facts computed by the simulation. The released v1.2 text itself
cannot be reproduced; the generated stories share its entities, sentence forms and answer semantics.

World: every actor has a true location (random at start, never told); an object lies on the floor of a
location or is held by one actor; held objects move with their holder.

* move(X, L) iff L ≠ X's location; get(X, O) iff O is unheld and in X's location; drop(X, O) iff X holds O;
  give(X, O, Y) iff X holds O, Y ≠ X and Y is in X's location.
* For qa2/qa3 a get also needs X's location to have been stated (X moved before), so every object location
  is deducible from the text — the rule that "only deducible questions are asked" then needs no guesswork.
* An action type is drawn uniformly among the types with at least one valid choice of arguments, then the
  arguments uniformly among the valid ones.

Tasks: qa1 (``Where is X?``), qa2 (``Where is the O?``), qa3 (``Where was the O before the L?``), qa4
(``What is <dir> of the Y?`` / ``What is the X <dir> of?``), qa5 (gives: who gave / what / who received).
Supporting line numbers are listed most recent first (as v1.2 does for qa3).

File format (bAbI v1.2): ``"<n> <sentence>"``, numbering restarting at 1 per episode; question lines are
``"<n> <question> \\t<answer>\\t<support numbers>"``. :func:`parse_babi` reads real v1.2 files too.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Iterator

ACTORS = ("John", "Mary", "Sandra", "Daniel")
ACTORS_QA5 = ("Bill", "Fred", "Jeff", "Mary")
LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}
TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")

_GET = ("{x} got the {o} there.", "{x} picked up the {o} there.", "{x} grabbed the {o} there.",
        "{x} took the {o} there.")
_DROP = ("{x} dropped the {o}.", "{x} put down the {o}.", "{x} discarded the {o}.", "{x} left the {o}.")
# Surface forms per action (qa3 also shows gets without and drops with "there"); override to taste.
FORMS = {
    "move": ("{x} moved to the {l}.", "{x} went to the {l}.", "{x} went back to the {l}.",
             "{x} journeyed to the {l}.", "{x} travelled to the {l}."),
    "get": _GET,
    "get_qa3": _GET + ("{x} took the {o}.", "{x} got the {o}."),
    "drop": _DROP,
    "drop_qa3": _DROP + ("{x} dropped the {o} there.", "{x} put down the {o} there.",
                         "{x} discarded the {o} there.", "{x} left the {o} there."),
    "give": ("{x} gave the {o} to {y}.", "{x} handed the {o} to {y}.", "{x} passed the {o} to {y}."),
}
MAX_QUESTIONS = 5
MAX_STATEMENTS = 200  # an episode ends here even with fewer than MAX_QUESTIONS questions


@dataclasses.dataclass(frozen=True)
class BabiLine:
  """One numbered line of an episode; a question when ``answer`` is set."""

  number: int
  text: str
  answer: str | None = None
  support: tuple[int, ...] = ()

  @property
  def is_question(self) -> bool:
    return self.answer is not None


@dataclasses.dataclass(frozen=True)
class BabiSample:
  """One question with every statement of its episode before it (earlier questions dropped)."""

  task: str
  facts: tuple[str, ...]
  question: str
  answer: str
  supporting: tuple[int, ...]  # indices into ``facts``, in the file's order


# ---------------------------------------------------------------------------------------------- world


class _World:
  """The simulation state plus what the text has told so far (line numbers of the evidence)."""

  def __init__(self, rng: random.Random, actors, require_stated: bool, forms_suffix: str = ""):
    self.rng, self.actors, self.require_stated, self.suffix = rng, actors, require_stated, forms_suffix
    self.location = {a: rng.choice(LOCATIONS) for a in actors}
    self.floor = {o: rng.choice(LOCATIONS) for o in OBJECTS}  # meaningful only while unheld
    self.holder: dict[str, str | None] = {o: None for o in OBJECTS}
    self.lines: list[BabiLine] = []
    self.last_move: dict[str, int] = {}  # actor -> line of the latest move
    self.last_get: dict[tuple[str, str], int] = {}  # (actor, object) -> line
    self.drop_evidence: dict[str, tuple[int, ...]] = {}  # object -> (drop line, dropper's move before it)
    self.history: dict[str, list[tuple[str, tuple[int, ...]]]] = {o: [] for o in OBJECTS}  # qa3
    self.gives: list[tuple[int, str, str, str]] = []  # (line, giver, object, recipient)

  def options(self, kind: str) -> list[tuple]:
    if kind == "move":
      return [(a, l) for a in self.actors for l in LOCATIONS if l != self.location[a]]
    if kind == "get":
      return [(a, o) for o in OBJECTS if self.holder[o] is None for a in self.actors
              if self.location[a] == self.floor[o] and (a in self.last_move or not self.require_stated)]
    if kind == "drop":
      return [(self.holder[o], o) for o in OBJECTS if self.holder[o] is not None]
    if kind == "give":
      return [(x, o, y) for o in OBJECTS if (x := self.holder[o]) is not None for y in self.actors
              if y != x and self.location[y] == self.location[x]]
    raise ValueError(f"unknown action kind {kind!r}.")

  def act(self, kinds: tuple[str, ...], exclude=None) -> tuple | None:
    """Draws and applies one valid action (kind uniform among the possible kinds); None if none is valid."""
    options = {k: [args for args in self.options(k) if exclude is None or not exclude(k, args)] for k in kinds}
    possible = [k for k in kinds if options[k]]
    if not possible:
      return None
    kind = self.rng.choice(possible)
    args = self.rng.choice(options[kind])
    self._apply(kind, args)
    return (kind, *args)

  def _say(self, text: str) -> int:
    number = len(self.lines) + 1
    self.lines.append(BabiLine(number, text))
    return number

  def _form(self, kind: str) -> str:
    return self.rng.choice(FORMS.get(kind + self.suffix, FORMS[kind]))

  def _apply(self, kind: str, args: tuple) -> None:
    if kind == "move":
      actor, loc = args
      line = self._say(self._form("move").format(x=actor, l=loc))
      for o in OBJECTS:  # a held object moves from the actor's previous (stated) location: qa3's history
        if self.require_stated and self.holder[o] == actor:
          self.history[o].append((loc, (line, self.last_move[actor], self.last_get[actor, o])))
      self.location[actor], self.last_move[actor] = loc, line
    elif kind == "get":
      actor, obj = args
      line = self._say(self._form("get").format(x=actor, o=obj))
      self.holder[obj], self.last_get[actor, obj] = actor, line
      if not self.history[obj] and actor in self.last_move:
        self.history[obj].append((self.location[actor], (line, self.last_move[actor])))
    elif kind == "drop":
      actor, obj = args
      line = self._say(self._form("drop").format(x=actor, o=obj))
      self.holder[obj], self.floor[obj] = None, self.location[actor]
      if actor in self.last_move:
        self.drop_evidence[obj] = (line, self.last_move[actor])
      else:
        self.drop_evidence.pop(obj, None)
    elif kind == "give":
      giver, obj, recipient = args
      line = self._say(self._form("give").format(x=giver, o=obj, y=recipient))
      self.holder[obj] = recipient
      self.gives.append((line, giver, obj, recipient))

  def ask(self, question: str, answer: str, support: Iterable[int]) -> None:
    self.lines.append(BabiLine(len(self.lines) + 1, question, answer, tuple(sorted(set(support), reverse=True))))


# ------------------------------------------------------------------------------------------ episodes


def _qa1(rng: random.Random) -> list[BabiLine]:
  world = _World(rng, ACTORS, require_stated=True)
  for _ in range(MAX_QUESTIONS):
    for _ in range(2):
      world.act(("move",))
    actor = rng.choice(sorted(world.last_move))
    world.ask(f"Where is {actor}?", world.location[actor], [world.last_move[actor]])
  return world.lines


def _object_question_qa2(world: _World):
  candidates = []
  for o in OBJECTS:
    holder = world.holder[o]
    if holder is not None and (holder, o) in world.last_get:
      candidates.append((o, world.location[holder], (world.last_get[holder, o], world.last_move[holder])))
    elif holder is None and o in world.drop_evidence:
      candidates.append((o, world.floor[o], world.drop_evidence[o]))
  if not candidates:
    return None
  obj, answer, support = world.rng.choice(candidates)
  return f"Where is the {obj}?", answer, support


def _object_question_qa3(world: _World):
  candidates = []
  for o in OBJECTS:
    places = [loc for loc, _ in world.history[o]]
    for i in range(1, len(places)):
      if places.count(places[i]) == 1:
        candidates.append((o, places[i], places[i - 1], world.history[o][i][1]))
  if not candidates:
    return None
  obj, place, answer, support = world.rng.choice(candidates)
  return f"Where was the {obj} before the {place}?", answer, support


def _qa23(rng: random.Random, task: str) -> list[BabiLine]:
  world = _World(rng, ACTORS, require_stated=True, forms_suffix="_qa3" if task == "qa3" else "")
  questioner = _object_question_qa2 if task == "qa2" else _object_question_qa3
  questions, since = 0, 0
  while questions < MAX_QUESTIONS and len(world.lines) < MAX_STATEMENTS:
    world.act(("get", "drop", "move"))
    since += 1
    if since >= 3 and rng.random() < 0.5:
      q = questioner(world)
      if q is not None:
        world.ask(*q)
        questions, since = questions + 1, 0
  return world.lines


def _qa4(rng: random.Random) -> list[BabiLine]:
  first, second = rng.choice((("north", "south"), ("east", "west")))
  a, b, c = rng.sample(LOCATIONS, 3)  # a —first→ b —first→ c along one axis
  relations = [(a, first, b), (b, first, c)]
  rng.shuffle(relations)
  lines = []
  for n, (x, d, y) in enumerate(relations, start=1):
    text = f"The {x} is {d} of the {y}." if rng.random() < 0.5 else f"The {y} is {OPPOSITE[d]} of the {x}."
    lines.append(BabiLine(n, text))
  which = rng.randrange(2)
  x, d, y = relations[which]  # x is d of y
  question, answer = rng.choice([(f"What is {d} of the {y}?", x), (f"What is {OPPOSITE[d]} of the {x}?", y),
                                 (f"What is the {x} {d} of?", y), (f"What is the {y} {OPPOSITE[d]} of?", x)])
  lines.append(BabiLine(3, question, answer, (which + 1,)))
  return lines


def _qa5(rng: random.Random) -> list[BabiLine]:
  world = _World(rng, ACTORS_QA5, require_stated=False)
  questions = 0
  while questions < MAX_QUESTIONS and len(world.lines) < MAX_STATEMENTS:
    action = world.act(("move", "get", "drop", "give"))
    if action is None or action[0] != "give" or len(world.lines) < 2:
      continue
    _, giver, obj, recipient = action
    line = len(world.lines)

    def related(kind, args, obj=obj, pair=(giver, recipient)):  # distractors must not be these
      return (kind != "move" and args[1] == obj) or (kind == "give" and (args[0], args[2]) == pair)

    for _ in range(rng.randint(0, 5)):
      if world.act(("move", "get", "drop", "give"), exclude=related) is None:
        break
    question, answer = rng.choice([(f"What did {giver} give to {recipient}?", obj),
                                   (f"Who gave the {obj} to {recipient}?", giver),
                                   (f"Who did {giver} give the {obj} to?", recipient),
                                   (f"Who received the {obj}?", recipient), (f"Who gave the {obj}?", giver)])
    world.ask(question, answer, [line])
    questions += 1
  return world.lines


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"unknown bAbI task {task!r}; expected one of {TASKS}.")


def make_babi_episodes(task: str, num_episodes: int, seed: int = 0) -> Iterator[list[BabiLine]]:
  """Lazily yields ``num_episodes`` generated episodes of ``task`` (``qa1`` … ``qa5``)."""
  _check_task(task)
  rng = random.Random(f"babi-{task}-{seed}")
  for _ in range(num_episodes):
    if task == "qa1":
      yield _qa1(rng)
    elif task in ("qa2", "qa3"):
      yield _qa23(rng, task)
    elif task == "qa4":
      yield _qa4(rng)
    else:
      yield _qa5(rng)


def make_babi_samples(task: str, num_samples: int, seed: int = 0) -> Iterator[BabiSample]:
  """Lazily yields ``num_samples`` one-question samples cut from generated episodes (in order)."""
  count = 0
  for episode in make_babi_episodes(task, num_episodes=10 ** 9, seed=seed):
    for sample in episode_samples(episode, task):
      if count == num_samples:
        return
      yield sample
      count += 1
    if count == num_samples:
      return


# -------------------------------------------------------------------------------------- v1.2 format


def format_babi(episodes: Iterable[list[BabiLine]]) -> str:
  """Episodes → bAbI v1.2 text (question lines: ``"<n> <question> \\t<answer>\\t<support>"``)."""
  out = []
  for episode in episodes:
    for line in episode:
      if line.is_question:
        out.append(f"{line.number} {line.text} \t{line.answer}\t{' '.join(map(str, line.support))}")
      else:
        out.append(f"{line.number} {line.text}")
  return "\n".join(out) + "\n"


def parse_babi(text: str) -> list[list[BabiLine]]:
  """bAbI v1.2 text → episodes (a new episode starts at line number 1)."""
  episodes: list[list[BabiLine]] = []
  for row, raw in enumerate(text.splitlines(), start=1):
    if not raw.strip():
      continue
    number_text, _, rest = raw.strip("\n").partition(" ")
    if not number_text.isdigit():
      raise ValueError(f"bAbI line {row} does not start with a line number: {raw!r}.")
    number = int(number_text)
    if number == 1 or not episodes:
      episodes.append([])
    if "\t" in rest:
      fields = rest.split("\t")
      support = tuple(int(s) for s in fields[2].split()) if len(fields) > 2 else ()
      episodes[-1].append(BabiLine(number, fields[0].strip(), fields[1].strip(), support))
    else:
      episodes[-1].append(BabiLine(number, rest.strip()))
  return episodes


def load_babi_file(path: str) -> list[list[BabiLine]]:
  """Reads a bAbI v1.2 file (e.g. ``qa1_single-supporting-fact_test.txt``) into episodes."""
  with open(path, encoding="utf-8") as f:
    return parse_babi(f.read())


def episode_samples(episode: list[BabiLine], task: str = "") -> list[BabiSample]:
  """One sample per question: the episode's statements before it, the question, answer and support indices."""
  samples, facts, index_of = [], [], {}
  for line in episode:
    if not line.is_question:
      index_of[line.number] = len(facts)
      facts.append(line.text)
      continue
    missing = [n for n in line.support if n not in index_of]
    if missing:
      raise ValueError(f"question line {line.number} ({line.text!r}) cites lines {missing} that are not "
                       "statements before it.")
    samples.append(BabiSample(task, tuple(facts), line.text, line.answer, tuple(index_of[n] for n in line.support)))
  return samples
