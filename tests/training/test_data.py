"""Data pipeline: tokenizers, sources, packing, Grain iterator state, per-process sharding, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atlas_jax.training import data as data_lib
from atlas_jax.training.tokenizers import ByteTokenizer, make_tokenizer
from experiments.configs import common


def _data_config(**changes):
  c = common.base_config().data
  for k, v in changes.items():
    setattr(c, k, v)
  return c


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  text = "In the beginning — ἀρχή"
  assert tok.decode(tok.encode(text)) == text and tok.eos_id == 256 and tok.vocab_size == 257
  with pytest.raises(ValueError, match="vocab_size ≥ 257"):
    ByteTokenizer(100)
  with pytest.raises(FileNotFoundError, match="SentencePiece model file not found"):
    make_tokenizer("sentencepiece", "/nonexistent.model")


def test_huggingface_tokenizer_adds_no_special_tokens(tmp_path):
  """A tokenizer whose post-processor adds <s> to every encoding (as many do): packing separates documents with
  eos only, as with the other tokenizers. One with no end-of-text token is refused, not given id 0."""
  tokenizers = pytest.importorskip("tokenizers")

  def save(special):
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<s>": 0, "hello": 1, "world": 2, special: 3}, "hello"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    path = str(tmp_path / f"{len(special)}.json")
    tok.save(path)
    return path

  tok = make_tokenizer("huggingface", save("</s>"))
  assert tok.encode("hello world") == [1, 2] and tok.eos_id == 3
  assert make_tokenizer("huggingface", save("<|end_of_text|>")).eos_id == 3
  with pytest.raises(ValueError, match="none of the end-of-text tokens"):
    make_tokenizer("huggingface", save("<pad>"))
  assert make_tokenizer("huggingface", save("<pad>"), eos_token="<pad>").eos_id == 3  # data.eos_token
  with pytest.raises(ValueError, match="applies to the huggingface tokenizer only"):
    make_tokenizer("byte", eos_token="<pad>")


def test_bible_source_is_real_text_with_a_book_split():
  train, val = data_lib.bible_documents()
  assert len(train) > 1000 and len(val) == 1 + 22  # Jude 1, Revelation 1–22
  assert train[0].startswith("Genesis 1\nIn the beginning God created the heaven and the earth.")


def test_text_and_jsonl_sources(tmp_path):
  for i in range(4):
    (tmp_path / f"doc{i}.txt").write_text(f"document number {i} " * 20)
  train, val, _ = data_lib.load_tokens(_data_config(source="text", path=str(tmp_path / "*.txt"), val_fraction=0.25),
                                       257)
  assert train.dtype == np.int32 and (train == 256).sum() == 3 and (val == 256).sum() == 1
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a 'text' field"):
    data_lib.load_tokens(_data_config(source="jsonl", path=str(bad)), 257)


def test_packing_and_iterator_state_replay():
  tokens = np.arange(1000, dtype=np.int32)
  ds = data_lib.make_dataset(tokens, seq_len=9, batch_size=4, seed=3)
  first = ds[0]
  assert first.shape == (4, 10)
  assert all(np.array_equal(row, np.arange(row[0], row[0] + 10)) and row[0] % 9 == 0 for row in first)
  it = data_lib.make_iterator(ds)
  for _ in range(5):
    next(it)
  state = it.get_state()
  json.dumps(state)  # plain JSON
  expected = [next(it) for _ in range(3)]
  it2 = data_lib.make_iterator(ds)
  it2.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(it2), e)


def test_processes_get_disjoint_shares():
  tokens = np.arange(2000, dtype=np.int32)
  shares = [data_lib.make_dataset(tokens, 9, 2, seed=0, process_index=i, process_count=2, repeat=False)
            for i in range(2)]
  starts = [{int(r[0]) for b in range(len(s)) for r in s[b]} for s in shares]
  assert starts[0].isdisjoint(starts[1])


def test_prepare_data_writes_shards_and_resumes(tmp_path):
  from experiments.prepare_data import prepare, shard_path

  for i in range(3):
    (tmp_path / f"part{i}.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i}.{j}"}) for j in range(4)))
  out = tmp_path / "shards"
  manifest = prepare(str(tmp_path / "*.jsonl"), str(out))
  assert [s["tokens"] for s in manifest["shards"]] == [4 * 8] * 3  # "doc i.j" = 7 bytes + separator
  assert [(s["min_id"], s["max_id"]) for s in manifest["shards"]] == [(ord(" "), 256)] * 3
  assert manifest["shards"][0]["bytes"] == (out / "part0.npy").stat().st_size and manifest["eos_token"] == ""
  first = shard_path(str(out), str(tmp_path / "part0.jsonl"))
  mtime = __import__("os").path.getmtime(first)
  prepare(str(tmp_path / "*.jsonl"), str(out))  # a second run skips finished shards
  assert __import__("os").path.getmtime(first) == mtime
  train, val, _ = data_lib.load_tokens(_data_config(source="tokens", path=str(out), val_fraction=0.25), 257)
  assert len(train) + len(val) == 96  # the directory stands for its *.npy shards
  with pytest.raises(ValueError, match="holds shards of tokenizer 'byte'"):
    prepare(str(tmp_path / "*.jsonl"), str(out), tokenizer="tiktoken")  # would mix two vocabularies
  # Shards of another tokenizer than the run's are refused (the paper configs default to the byte tokenizer).
  recorded = json.loads((out / "manifest.json").read_text())
  (out / "manifest.json").write_text(json.dumps(dict(recorded, tokenizer="sentencepiece",
                                                     tokenizer_path="/data/32k.model")))
  with pytest.raises(ValueError, match=r"tokenized with tokenizer 'sentencepiece' \(file '32k.model'.* "
                                       r"data.tokenizer='byte'"):
    data_lib.load_tokens(_data_config(source="tokens", path=str(out / "*.npy")), 257)


def test_token_shards_are_read_window_by_window(tmp_path):
  """The `tokens` source reads windows straight from the shards: across shard boundaries, any integer dtype, an
  empty shard, the validation split at the end, and pickled (as Grain's worker processes receive it)."""
  import pickle

  from atlas_jax.training.token_shards import TokenStream

  whole = np.arange(167, dtype=np.int32)  # token i is i, so a window names its start
  parts = [whole[a:b].astype(dtype) for a, b, dtype in ((0, 50, np.uint16), (50, 50, np.int32), (50, 87, np.int64),
                                                         (87, 167, np.int32))]
  for i, part in enumerate(parts):
    np.save(tmp_path / f"s{i}.npy", part)
  train, val, _ = data_lib.load_tokens(_data_config(source="tokens", path=str(tmp_path / "*.npy"), val_fraction=0.1),
                                       257)
  assert isinstance(train, TokenStream) and (len(train), len(val)) == (151, 16)
  np.testing.assert_array_equal(train[:], whole[:151])
  np.testing.assert_array_equal(val[3:9], whole[154:160])
  for a, b in ((0, 50), (45, 95), (49, 51), (10, 151), (140, 200)):
    got = train[a:b]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, whole[:151][a:b])
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(train))[45:95], whole[45:95])
  ds = data_lib.make_dataset(train, seq_len=9, batch_size=4, seed=2)
  for row in ds[0]:
    assert row[0] % 9 == 0
    np.testing.assert_array_equal(row, whole[row[0]:row[0] + 10])


def test_token_shard_ids_are_checked_from_the_manifest_or_the_data(tmp_path):
  np.save(tmp_path / "a.npy", np.array([1, 2, 300], np.int32))
  config = _data_config(source="tokens", path=str(tmp_path / "*.npy"))
  with pytest.raises(ValueError, match=r"a.npy: token ids range over \[1, 300\], outside \[0, 257\)"):
    data_lib.load_tokens(config, 257)
  # A manifest (as prepare_data writes it) is trusted instead of reading the shard, while count and size match.
  size = (tmp_path / "a.npy").stat().st_size
  manifest = {"shards": [{"path": "a.npy", "tokens": 3, "bytes": size, "min_id": -1, "max_id": 5}]}
  (tmp_path / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match=r"range over \[-1, 5\]"):
    data_lib.load_tokens(config, 257)
  for key, stale in (("tokens", 4), ("bytes", size + 4)):  # stale: the shard is read again
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [dict(manifest["shards"][0], **{key: stale})]}))
    with pytest.raises(ValueError, match=r"range over \[1, 300\]"):
      data_lib.load_tokens(config, 257)
  (tmp_path / "manifest.json").write_text('{"shards": [{"path": "a.np')  # cut short: ignored, the shard is read
  with pytest.raises(ValueError, match=r"range over \[1, 300\]"):
    data_lib.load_tokens(config, 257)
  with open(tmp_path / "a.npy", "r+b") as f:  # a shard cut short is refused when opened, not mid-training
    f.truncate(size - 4)
  with pytest.raises(ValueError, match="header promises 3 tokens .* it was cut short"):
    data_lib.load_tokens(config, 257)
  np.save(tmp_path / "a.npy", np.array([0.5]))
  with pytest.raises(ValueError, match="token shards must hold integers"):
    data_lib.load_tokens(config, 257)


def test_huggingface_source_streams_offline(monkeypatch):
  """The Hugging Face source, with `load_dataset` served by an in-memory dataset (no network)."""
  datasets = pytest.importorskip("datasets")
  calls = {}

  def fake_load_dataset(path, name=None, split=None, streaming=False):
    calls.update(path=path, name=name, split=split, streaming=streaming)
    rows = {"text": [f"story number {i}" for i in range(10)], "id": list(range(10))}
    return datasets.Dataset.from_dict(rows).to_iterable_dataset()

  monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
  config = _data_config(source="huggingface", path="someone/stories", max_documents=8, val_fraction=0.25)
  train, val, _ = data_lib.load_tokens(config, 257)
  assert calls == {"path": "someone/stories", "name": None, "split": "train", "streaming": True}
  assert (train == 256).sum() == 6 and (val == 256).sum() == 2
  config.hf_text_field = "body"
  with pytest.raises(ValueError, match="has no field 'body'"):
    data_lib.load_tokens(config, 257)


def test_worker_processes_give_the_same_batches():
  """Grain worker processes (spawned) produce exactly the in-process batches, and replay from a state."""
  tokens = np.arange(3000, dtype=np.int32)
  ds = data_lib.make_dataset(tokens, seq_len=9, batch_size=4, seed=1)
  plain = data_lib.make_iterator(ds)
  expected = [next(plain) for _ in range(6)]
  workers = data_lib.make_iterator(ds, num_workers=2)
  got = [next(workers) for _ in range(3)]
  state = workers.get_state()
  got += [next(workers) for _ in range(3)]
  for e, g in zip(expected, got):
    np.testing.assert_array_equal(e, g)
  replay = data_lib.make_iterator(ds, num_workers=2)
  replay.set_state(state)
  np.testing.assert_array_equal(next(replay), expected[3])
