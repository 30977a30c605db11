"""Tokenize a text corpus into .npy token shards for the ``tokens`` data source (parallel, resumable).

    python -m experiments.prepare_data --input='corpus/*.jsonl' --output=shards/ --tokenizer=sentencepiece \
        --tokenizer_path=32k.model --workers=8

Each input file becomes one shard ``<output>/<stem>.npy`` (int32; documents separated by the tokenizer's eos);
``.txt`` files are one document, ``.jsonl`` files one document per line's ``text`` field. A shard is written to a
temporary name and renamed when complete, so an interrupted run is resumed by running it again: finished shards
are skipped. ``manifest.json`` names the tokenizer (written first; a rerun with another tokenizer is refused) and,
when done, lists the shards with their token counts and id ranges (which training reads instead of the shards).
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os

from absl import app, flags
import numpy as np

from atlas_jax.text_files import read_texts
from atlas_jax.training.tokenizers import make_tokenizer

_INPUT = flags.DEFINE_string("input", None, "glob of .txt / .jsonl files")
_OUTPUT = flags.DEFINE_string("output", None, "output directory")
_TOKENIZER = flags.DEFINE_string("tokenizer", "byte", "byte | sentencepiece | huggingface | tiktoken")
_TOKENIZER_PATH = flags.DEFINE_string("tokenizer_path", "", "tokenizer file")
_EOS_TOKEN = flags.DEFINE_string("eos_token", "", "huggingface: the document separator's token (default: the usual "
                                 "names)")
_WORKERS = flags.DEFINE_integer("workers", 1, "parallel processes")


def shard_path(output: str, path: str) -> str:
  return os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".npy")


def _id_summary(target: str, ids: np.ndarray) -> dict:
  """A manifest entry: the shard's token count, size and id range (the training loader trusts the range, when
  the count and size still match, instead of reading the whole shard to check the ids)."""
  return {"path": os.path.basename(target), "tokens": int(ids.size), "bytes": os.path.getsize(target),
          "min_id": int(ids.min()) if ids.size else 0, "max_id": int(ids.max()) if ids.size else 0}


def tokenize_file(args) -> dict:
  """Tokenize one file into its shard (skipped if present); returns its manifest entry."""
  path, output, kind, tokenizer_path, eos_token = args
  target = shard_path(output, path)
  if os.path.exists(target):
    return _id_summary(target, np.load(target, mmap_mode="r"))
  tokenizer = make_tokenizer(kind, tokenizer_path, 1 << 31, eos_token)
  docs = [np.asarray(tokenizer.encode(doc) + [tokenizer.eos_id], np.int32) for doc in read_texts(path)]
  ids = np.concatenate(docs) if docs else np.zeros(0, np.int32)
  tmp = target + ".partial"  # not *.npy, so a training glob never picks up an unfinished shard
  with open(tmp, "wb") as f:
    np.save(f, ids)
  os.replace(tmp, target)
  return _id_summary(target, ids)


def _check_same_tokenizer(output: str, tokenizer: str, tokenizer_path: str, eos_token: str) -> None:
  """Finished shards are reused on a rerun, so a rerun with another tokenizer would mix two vocabularies."""
  manifest = os.path.join(output, "manifest.json")
  if not os.path.exists(manifest):
    if glob.glob(os.path.join(output, "*.npy")):
      raise ValueError(f"{output} holds .npy shards but no manifest.json, so their tokenizer is unknown; use an "
                       "empty output directory.")
    return
  with open(manifest, encoding="utf-8") as f:
    old = json.load(f)
  if (old.get("tokenizer"), old.get("tokenizer_path"), old.get("eos_token", "")) != (tokenizer, tokenizer_path,
                                                                                     eos_token):
    raise ValueError(f"{output} holds shards of tokenizer {old.get('tokenizer')!r} ({old.get('tokenizer_path')!r}, "
                     f"eos {old.get('eos_token', '')!r}); this run asks for {tokenizer!r} ({tokenizer_path!r}, eos "
                     f"{eos_token!r}). Use another output directory.")


def prepare(input_glob: str, output: str, tokenizer: str = "byte", tokenizer_path: str = "", workers: int = 1,
            eos_token: str = ""):
  paths = sorted(glob.glob(input_glob))
  if not paths:
    raise FileNotFoundError(f"--input={input_glob!r} matches no file.")
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  if len(set(stems)) != len(stems):
    raise ValueError("input files must have distinct names (each becomes <name>.npy).")
  os.makedirs(output, exist_ok=True)
  _check_same_tokenizer(output, tokenizer, tokenizer_path, eos_token)
  _write_manifest(output, tokenizer, tokenizer_path, eos_token, [])  # the tokenizer first: a resumed run checks it
  jobs = [(p, output, tokenizer, tokenizer_path, eos_token) for p in paths]
  if workers > 1:
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      results = []
      for i, result in enumerate(pool.imap(tokenize_file, jobs), 1):
        results.append(result)
        print(f"[{i}/{len(jobs)}] {result['path']}: {result['tokens']:,} tokens", flush=True)
  else:
    results = []
    for i, job in enumerate(jobs, 1):
      results.append(tokenize_file(job))
      print(f"[{i}/{len(jobs)}] {results[-1]['path']}: {results[-1]['tokens']:,} tokens", flush=True)
  return _write_manifest(output, tokenizer, tokenizer_path, eos_token, results)


def _write_manifest(output: str, tokenizer: str, tokenizer_path: str, eos_token: str, shards: list[dict]) -> dict:
  """Written to a temporary name and renamed, so an interrupted write leaves the old manifest."""
  manifest = {"tokenizer": tokenizer, "tokenizer_path": tokenizer_path, "eos_token": eos_token, "shards": shards}
  path = os.path.join(output, "manifest.json")
  with open(path + ".partial", "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  os.replace(path + ".partial", path)
  return manifest


def main(argv):
  del argv
  manifest = prepare(_INPUT.value, _OUTPUT.value, _TOKENIZER.value, _TOKENIZER_PATH.value, _WORKERS.value,
                     _EOS_TOKEN.value)
  print(f"{sum(s['tokens'] for s in manifest['shards']):,} tokens in {len(manifest['shards'])} shards")


if __name__ == "__main__":
  flags.mark_flags_as_required(["input", "output"])
  app.run(main)
