"""Reading text corpora: ``.jsonl`` files hold one document per line (its "text" field), other files one."""

from __future__ import annotations

import json


def read_texts(path: str, jsonl: bool | None = None) -> list[str]:
  """The documents of `path`: each non-blank line's "text" of a JSON-lines file, else the whole file as one.
  jsonl: whether `path` is JSON lines (default: it ends in ``.jsonl``).

  Raises ValueError naming the file and line of a ``.jsonl`` line that is not an object with a "text" field.
  """
  with open(path, encoding="utf-8") as f:
    if not (path.lower().endswith(".jsonl") if jsonl is None else jsonl):
      return [f.read()]
    docs = []
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        docs.append(json.loads(line)["text"])
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field ({e}).") from e
    return docs
