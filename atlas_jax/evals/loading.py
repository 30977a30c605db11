"""Load a model and its tokenizer for evaluation: from a training workdir (trained parameters) or a preset.

    model, tokenizer, info = load_model(workdir="runs/atlas_170m")            # newest checkpoint
    model, tokenizer, info = load_model(workdir="runs/atlas_170m", step=2000)  # a given step
    model, tokenizer, info = load_model(preset="atlas", size="tiny")          # random init (smoke / speed)

A workdir is what ``atlas_jax.training.loop.train_and_evaluate`` writes: checkpoints under
``<workdir>/checkpoints`` (Orbax, one folder per step; ``atlas_jax.training.checkpoint``) whose ``meta`` item holds
``model_config`` (``ModelConfig.to_dict()``) and ``experiment`` (the experiment ConfigDict as JSON, with
``data.tokenizer`` and ``data.tokenizer_path``). Only the parameters are restored (no optimiser state), onto one
device. The tokenizer is rebuilt with ``make_tokenizer`` from the experiment unless one is given.

A preset model is ``get_preset(preset, size)`` with ``overrides`` applied exactly as a training config applies
``model.overrides`` (``memory`` may be a nested dict of MemoryConfig fields). Its default tokenizer is the byte
tokenizer; when the preset's vocabulary is smaller than the tokenizer's (tiny presets have 256 ids, the byte
tokenizer 257) and ``overrides`` does not set ``vocab_size``, the vocabulary is raised to the tokenizer's.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from atlas_jax.config import ModelConfig
from atlas_jax.model import AtlasLM
from atlas_jax.presets import preset_config
from atlas_jax.training.checkpoint import Checkpointer, check_compatible, checkpoint_dir, param_shapes
from atlas_jax.training.tokenizers import make_tokenizer


def _build_tokenizer(tokenizer, tokenizer_path: str, vocab_size: int, eos_token: str = ""):
  """`tokenizer` as given (an object with encode/decode/vocab_size), or built from a kind name."""
  if tokenizer is None or isinstance(tokenizer, str):
    kind = tokenizer or "byte"
    return make_tokenizer(kind, tokenizer_path, vocab_size=max(vocab_size, 257) if kind == "byte" else vocab_size,
                          eos_token=eos_token)
  for attr in ("encode", "decode", "vocab_size"):
    if not hasattr(tokenizer, attr):
      raise TypeError(f"tokenizer={tokenizer!r} has no `{attr}`; expected a kind name (byte, sentencepiece, "
                      "huggingface, tiktoken) or an object with encode, decode, vocab_size and eos_id.")
  return tokenizer


def _check_vocab(tokenizer, config: ModelConfig, where: str) -> None:
  if tokenizer.vocab_size > config.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model of {where} has vocab_size "
                     f"{config.vocab_size}; its ids would fall outside the embedding. Use the tokenizer the model "
                     "was trained with (or a model with a larger vocabulary).")


def _single_device_target(abstract_params):
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params)


def _restore(workdir: str, step: int | None, seed: int):
  """(model, step, meta) from the given or newest checkpoint step of `workdir`."""
  directory = checkpoint_dir(workdir)
  checkpointer = Checkpointer(directory, async_save=False, read_only=True)
  try:
    steps = checkpointer.steps()
    if not steps:
      raise FileNotFoundError(f"workdir={workdir!r} holds no checkpoint (no step folder in {directory}).")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise ValueError(f"step={step} has no checkpoint in {directory}; saved steps: {steps}.")
    meta = checkpointer.read_meta(step)
    if "model_config" not in meta:
      raise ValueError(f"checkpoint {directory} step {step} has no model_config in its meta (keys: "
                       f"{sorted(meta)}); it was not written by atlas_jax.training.loop.")
    config = ModelConfig.from_dict(meta["model_config"])
    abstract = nnx.eval_shape(lambda: AtlasLM(config, rngs=nnx.Rngs(seed)))
    graphdef, abstract_params = nnx.split(abstract)
    check_compatible(meta, param_shapes(abstract_params), f"checkpoint {directory} step {step}")
    params, _ = checkpointer.restore(step, _single_device_target(abstract_params))
  finally:
    checkpointer.close()
  return nnx.merge(graphdef, params), step, meta


def load_model(*, workdir: str | None = None, preset: str | None = None, size: str = "tiny",
               overrides: dict[str, Any] | None = None, step: int | None = None, tokenizer=None,
               tokenizer_path: str = "", seed: int = 0):
  """(model, tokenizer, info) from a training `workdir` or a `preset` (exactly one of the two).

  Args:
    workdir: a training workdir; its newest checkpoint is loaded, or `step`.
    preset, size, overrides: a random-init model (``overrides``: ModelConfig fields, ``memory`` nested).
    step: checkpoint step to load (workdir only).
    tokenizer: None (the run's tokenizer / bytes), a kind name (``byte``, ``sentencepiece``, ``huggingface``,
      ``tiktoken``; with `tokenizer_path`), or a tokenizer object (encode, decode, vocab_size, eos_id).
    seed: parameter init seed (preset) / abstract-model seed (workdir; has no effect on restored values).

  Returns:
    model: an ``AtlasLM``; tokenizer; info: {source, step, workdir, preset, size, num_params, model_config}.
  """
  if (workdir is None) == (preset is None):
    raise ValueError(f"give exactly one of workdir= and preset=; got workdir={workdir!r}, preset={preset!r}.")
  if workdir is not None:
    if overrides:
      raise ValueError(f"overrides={overrides!r} apply to presets only; a workdir's model config is fixed by its "
                       "checkpoint.")
    model, step, meta = _restore(os.fspath(workdir), step, seed)
    config = model.config
    data = meta.get("experiment", {}).get("data", {})
    if tokenizer is None:
      tokenizer = _build_tokenizer(data.get("tokenizer", "byte"), data.get("tokenizer_path", ""), config.vocab_size,
                                   data.get("eos_token", ""))
    else:
      tokenizer = _build_tokenizer(tokenizer, tokenizer_path, config.vocab_size)
    _check_vocab(tokenizer, config, f"workdir={workdir!r}")
    info = dict(source="workdir", workdir=os.fspath(workdir), step=step, preset=None, size=None)
  else:
    if step is not None:
      raise ValueError(f"step={step} needs workdir=; a preset model is randomly initialised.")
    overrides = dict(overrides or {})
    base = preset_config(preset, size, overrides)
    tokenizer = _build_tokenizer(tokenizer, tokenizer_path, base.vocab_size)
    config = base
    if "vocab_size" not in overrides and tokenizer.vocab_size > base.vocab_size:
      config = base.replace(vocab_size=tokenizer.vocab_size)
    _check_vocab(tokenizer, config, f"preset={preset!r}")
    model = AtlasLM(config, rngs=nnx.Rngs(seed))
    info = dict(source="preset", workdir=None, step=None, preset=preset, size=size)
  _, params = nnx.split(model, nnx.Param)
  info["num_params"] = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
  info["model_config"] = config.to_dict()
  return model, tokenizer, info
