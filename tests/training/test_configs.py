"""Every experiment config loads, is locked, and names a valid model."""

from __future__ import annotations

import glob
import importlib.util
import os

import pytest

from atlas_jax.presets import PRESETS, get_preset
from atlas_jax.training.loop import model_config_from

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py"))
               if os.path.basename(f) not in ("__init__.py", "common.py"))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3].replace(".", "_"), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_config_loads_locked_and_builds(path):
  module = _load(path)
  assert "python -m experiments.main" in module.__doc__
  config = module.get_config()
  with pytest.raises(AttributeError):
    config.train.stepz = 1  # locked: a typo is an error
  model = model_config_from(config)
  assert model.num_layers > 0


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_every_preset_keeps_its_own_blocks(path):
  """A config's preset argument picks the model: its block kinds are the preset's (a config once forced memory
  blocks on every preset, so demo.py:swa trained memory layers)."""
  module = _load(path)
  for name in PRESETS:
    model = model_config_from(module.get_config(name))
    assert set(model.blocks) == set(get_preset(name, "tiny").blocks), name


def test_overrides_re_derive_dependent_fields():
  """num_layers re-derives the block list and width the memory heads, as get_preset does; memory is nested."""
  config = _load(os.path.join(ROOT, "experiments", "configs", "paper_170m.py")).get_config()
  config.unlock()
  config.model.overrides.num_layers = 3
  config.model.overrides.width = 256
  config.model.overrides.memory = {"chunk_size": 16}
  model = model_config_from(config)
  assert len(model.blocks) == 3 and model.memory_heads * model.memory_head_dim == 256
  assert model.memory.chunk_size == 16 and model.memory.muon  # the rest of the preset's memory is kept
  config.model.overrides.memory = {"chunk_sise": 16}
  with pytest.raises(ValueError, match="chunk_sise"):
    model_config_from(config)
  config.model.overrides.memory = {}
  config.model.overrides.num_layers = 2
  config.model.overrides.scan_layers = False
  config.model.overrides.blocks = ("memory, swa",)  # what --config.model.overrides.blocks=memory,swa parses to
  assert model_config_from(config).blocks == ("memory", "swa")


def test_every_model_field_can_be_overridden_in_a_locked_config():
  """Configs declare every ModelConfig and MemoryConfig field (None: the preset's value), so command-line flags
  such as --config.model.overrides.memory.max_grad_norm=1.0 reach fields the file never sets."""
  config = _load(os.path.join(ROOT, "experiments", "configs", "demo.py")).get_config("titans")
  preset = model_config_from(config)
  config.model.overrides.memory.max_grad_norm = 1.0
  config.model.overrides.eta_init = 0.01
  model = model_config_from(config)
  assert model.memory.max_grad_norm == 1.0 and model.eta_init == 0.01
  assert model.memory.chunk_size == 64 and model.memory.momentum == preset.memory.momentum  # the rest is kept
  with pytest.raises(AttributeError):
    config.model.overrides.memory.max_grad_nrom = 1.0  # locked: a typo is an error
