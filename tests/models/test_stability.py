"""Every memory preset stays finite at initialisation over thousands of tokens of real text.

Short tests (20–40 tokens) cannot see an inner optimiser that diverges: before η's initial share and the kernel
memories' η_max followed ``ModelConfig``'s rules, Titans' memory overflowed within 60 bytes of this text,
Dot's within 50, DeepTransformers' within 230 and DLA's within 750 (tiny presets), and with C = 64 Titans' and
OmegaNet's within 200.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atlas_jax.evals.prose import kjv_text
from atlas_jax.model import AtlasLM
from atlas_jax.presets import PRESETS, get_preset

_MEMORY_PRESETS = [name for name in PRESETS if name not in ("transformer++", "swa")]
_LENGTH = 2048


@pytest.mark.parametrize("memory_of", ["tiny", "170m"])
@pytest.mark.parametrize("name", _MEMORY_PRESETS)
def test_preset_is_finite_on_long_text_at_init(name, memory_of):
  """The tiny model with the memory of the tiny preset (C = 8) or of the full-size presets (C = 64)."""
  text = kjv_text().encode()[50_000:50_000 + _LENGTH]
  tokens = jnp.asarray(np.frombuffer(text, np.uint8).astype(np.int32))[None]
  config = get_preset(name, "tiny")
  if memory_of != "tiny":
    full = get_preset(name, memory_of)
    config = get_preset(name, "tiny", width=128, num_heads=2, memory=full.memory,
                        memory_head_dim=full.memory_head_dim)
  model = AtlasLM(config, rngs=nnx.Rngs(0))
  logits, _ = nnx.jit(lambda model, tokens: model(tokens))(model, tokens)
  finite = np.isfinite(np.asarray(logits[0])).all(axis=-1)
  assert finite.all(), f"{name} ({memory_of} memory): first non-finite logits at token {int(np.argmin(finite))}"


def test_eta_share_follows_the_update_rule():
  share = lambda name: get_preset(name, "tiny").initial_eta_share
  assert share("delta") == pytest.approx(0.1) and share("atlas") == pytest.approx(0.1)  # Muon bounds the step
  assert share("titans") == pytest.approx(0.1 * (1 - 0.9))  # momentum without Muon: × (1 − θ_init); C = 8 ≤ 16
  assert get_preset("titans", "170m").initial_eta_share == pytest.approx(0.1 * (1 - 0.9) * 16 / 64)  # C = 64
  assert share("dla") == pytest.approx(0.1 * 0.03)  # dot bias, MLP memory
  assert get_preset("titans", "tiny", eta_init=0.05).initial_eta_share == 0.05
  with pytest.raises(ValueError, match="eta_init"):
    get_preset("titans", "tiny", eta_init=1.0)
  kernel = get_preset("dot", "tiny")
  assert kernel.inner_lr_max(kernel=True) == pytest.approx(
      1 / (kernel.memory.window * np.exp(np.sqrt(kernel.memory_head_dim))))
  # A stack mixing both kinds gives each layer its own bound.
  mixed = get_preset("dot", "tiny", blocks=("kernel_memory", "memory"))
  assert mixed.inner_lr_max(kernel=False) == pytest.approx(1 / mixed.memory.window)
