"""Shared pieces of every experiment config: ``base_config()`` returns a complete ConfigDict to adjust."""

from __future__ import annotations

import dataclasses
import types
import typing

import ml_collections

from atlas_jax.config import ModelConfig
from atlas_jax.memory import MemoryConfig
from atlas_jax.sharding import DEFAULT_RULES


def _flag_type(hint) -> type:
  """The type a command-line value of this field parses to: Literal → its values' type, X | None → X."""
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  origin = typing.get_origin(hint)
  if origin is typing.Literal:
    return type(args[0])
  if origin in (typing.Union, types.UnionType):
    return _flag_type(args[0])
  return origin or hint


def override_slots(cls) -> ml_collections.ConfigDict:
  """One placeholder per field of a config dataclass (None: keep the preset's value), so that every field can be
  set from the command line (ml_collections refuses keys a config does not declare); ``memory`` nests."""
  hints = typing.get_type_hints(cls)
  slots = ml_collections.ConfigDict()
  for field in dataclasses.fields(cls):
    if hints[field.name] is MemoryConfig:
      slots[field.name] = override_slots(MemoryConfig)
    else:
      slots[field.name] = ml_collections.config_dict.placeholder(_flag_type(hints[field.name]))
  return slots


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""  # fine-tune from (parameters only): a workdir, its checkpoints/, or checkpoints/<step>

  c.model = ml_collections.ConfigDict()
  c.model.preset = "atlas"
  c.model.size = "tiny"
  # Every ModelConfig field, None unless set (then it replaces the preset's value); `memory` nests MemoryConfig's:
  # --config.model.overrides.width=512, --config.model.overrides.memory.max_grad_norm=1.0.
  c.model.overrides = override_slots(ModelConfig)

  c.data = ml_collections.ConfigDict()
  c.data.source = "bible"  # bible | text | jsonl | tokens | synthetic | huggingface
  c.data.path = ""  # text/jsonl/tokens: a glob, or a directory of *.txt/*.jsonl/*.npy; huggingface: the dataset
  c.data.hf_config = ""  # huggingface: dataset config name
  c.data.hf_split = "train"
  c.data.hf_text_field = "text"
  c.data.max_documents = 100_000  # huggingface: documents streamed into memory
  c.data.tokenizer = "byte"  # byte | sentencepiece | huggingface | tiktoken
  c.data.tokenizer_path = ""
  c.data.eos_token = ""  # huggingface: the document separator's token, if not one of the usual names
  c.data.seq_len = 128
  c.data.batch_size = 16  # per process and per micro-batch
  c.data.val_fraction = 0.05  # the last share of documents (of tokens for tokens); bible: its last books
  c.data.num_workers = 0  # Grain worker processes
  c.data.seed = 0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.lr = 3e-3
  c.train.final_lr_fraction = 0.1
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.1
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.clip_norm = 1.0
  c.train.grad_accum = 1
  c.train.log_every = 10
  c.train.eval_every = 200
  c.train.eval_batches = 8
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.async_checkpoint = True
  c.train.sample_every = 0  # 0: only at the end when sample_tokens > 0
  c.train.sample_tokens = 200
  c.train.sample_prompt = "In the beginning"
  c.train.sample_temperature = 0.8
  c.train.sample_top_k = 40

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # data, fsdp, tensor
  c.mesh.rules = DEFAULT_RULES
  return c


# Table 7 of the paper (PAPER_NOTES.md): peak learning rate and training tokens per size.
PAPER_SETTINGS = {"170m": (3e-3, 15e9), "340m": (1.5e-3, 15e9), "760m": (1.25e-3, 30e9), "1.3b": (7e-4, 100e9)}


def paper_config(size: str, preset: str | None) -> ml_collections.ConfigDict:
  """A paper setting (Table 7): the preset `preset` (default atlas) at `size`, 4K context, 0.5M tokens per step
  (batch_size 16 × grad_accum 8 × 4096 tokens on one process; on P processes keep batch_size × grad_accum × P = 128.
  Each micro-batch's batch_size × P rows are split over the mesh's data × fsdp devices, which must divide them: 16
  devices at batch_size 16; trade grad_accum for batch_size on more, e.g. batch_size 4, grad_accum 4 on 8 hosts of 4
  chips; past 128 devices add a tensor axis), AdamW with warmup + cosine decay, weight decay 0.1. Data: FineWeb-Edu
  tokenized offline with a 32K tokenizer into .npy shards (``python -m experiments.prepare_data``); nothing is
  shipped. The presets' vocabulary is 32,000 ids; a tokenizer with more (32,768, say) needs
  ``--config.model.overrides.vocab_size=<its size>``. ATLAS's Muon runs at chunk granularity (one Newton–Schulz per
  chunk, SPEC.md §3.6) where the paper applies it at every position;
  ``--config.model.overrides.memory.granularity=token`` selects the paper's, at a higher cost per step."""
  lr, tokens = PAPER_SETTINGS[size]
  c = base_config()
  c.model.preset = preset or "atlas"
  c.model.size = size
  c.data.source = "tokens"
  c.data.seq_len = 4096
  c.data.batch_size = 16
  c.data.val_fraction = 0.001  # of a corpus the size of the run's tokens, 15M–100M: far more than an evaluation reads
  c.train.grad_accum = 8
  c.train.steps = int(tokens // 2**19)
  c.train.lr = lr
  c.train.warmup_steps = 2000
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.checkpoint_every = 1000
  c.train.sample_tokens = 0
  c.lock()
  return c
