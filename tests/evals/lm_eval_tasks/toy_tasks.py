"""Datasets of the toy lm-eval tasks (``custom_dataset: !function toy_tasks.<name>``), built in memory.

The expected metrics of a uniform byte model (every byte has probability 1/256) are written next to the data:
multiple choice picks the shortest choice (acc = 0.75 here), rolling perplexity gives byte_perplexity 256 and
bits_per_byte 8, and an echo generator (answers with the question's last word) gets exact_match 2/3.
"""

import datasets

MC_DOCS = [
    {"goal": "To open a jar,", "sol1": "twist the lid", "sol2": "hit it with a large hammer", "label": 0},
    {"goal": "To dry wet hair,", "sol1": "soak it in a bucket of cold water", "sol2": "use a towel", "label": 1},
    {"goal": "To light a room,", "sol1": "turn on a lamp", "sol2": "close every curtain in the house", "label": 0},
    {"goal": "To boil an egg,", "sol1": "freeze it", "sol2": "put it in boiling water", "label": 1},
]
MC_UNIFORM_ACC = 0.75  # the shortest choice is right in 3 of 4 documents

PPL_DOCS = [
    {"text": "In the beginning God created the heaven and the earth."},
    {"text": "And the earth was without form, and void;\nand darkness was upon the face of the deep."},
    {"text": "And God said, Let there be light: and there was light."},
]

GEN_DOCS = [
    {"question": "Repeat the word: apple", "answer": "apple"},
    {"question": "Repeat the word: river", "answer": "river"},
    {"question": "Repeat the word: stone", "answer": "cloud"},
]
GEN_ECHO_EXACT_MATCH = 2 / 3


def _dataset(rows):
  return {"test": datasets.Dataset.from_list(rows)}


def mc_dataset(**kwargs):
  return _dataset(MC_DOCS)


def ppl_dataset(**kwargs):
  return _dataset(PPL_DOCS)


def gen_dataset(**kwargs):
  return _dataset(GEN_DOCS)
