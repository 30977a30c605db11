"""MAD's models: an atlas-jax preset at MAD's width and depth, and MAD's compression auto-encoder.

MAD (EVALS_NOTES.md §1.8) swaps the sequence mixer of a 2-block, width-128 stack; in atlas-jax one block is a
sequence mixer + SwiGLU, so ``num_layers=2``. The compression task is an auto-encoder: the stack encodes the
sequence, the last position is kept, and a fixed decoder predicts every input token from that one vector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from atlas_jax.config import ModelConfig
from atlas_jax.layers import Dense, RMSNorm
from atlas_jax.model import AtlasLM
from atlas_jax.presets import preset_config

MAD_WIDTH, MAD_LAYERS = 128, 2


def mad_model_config(preset: str, vocab_size: int, *, size: str = "170m",
                     overrides: Mapping[str, Any] | None = None) -> ModelConfig:
  """`preset` at MAD's shape: width 128, 2 blocks, `vocab_size`, plain layers, no remat; `overrides` win."""
  fields = dict(vocab_size=vocab_size, width=MAD_WIDTH, num_layers=MAD_LAYERS, scan_layers=False, remat="none")
  fields.update(overrides or {})  # a nested "memory" dict overrides single memory fields, as in training configs
  return preset_config(preset, size, fields)


def sincos_positions(length: int, dim: int) -> jax.Array:
  """[T, D] sinusoidal embedding: sin(t ω_i) then cos(t ω_i), ω_i = 10000^(−i / (D/2 − 1)), zero-padded if D odd."""
  half = dim // 2
  freq = jnp.exp(-math.log(10000.0) / max(half - 1, 1) * jnp.arange(half, dtype=jnp.float32))
  angle = jnp.arange(length, dtype=jnp.float32)[:, None] * freq[None]
  emb = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class MadAutoEncoder(nnx.Module):
  """MAD's compression model around an AtlasLM: encode with its blocks, keep the last position, decode.

  logits[b, t] = head(final_norm(dec(h_b + pos_sincos(t)))), h_b = blocks(embed(tokens_b))[T − 1];
  dec = GELU ∘ Linear ∘ RMSNorm ∘ GELU ∘ Linear ∘ RMSNorm (Linear with bias). The AtlasLM's final norm and head
  are MAD's un-embedding "norm + linear".
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.lm = AtlasLM(config, rngs=rngs)
    width = config.width
    kw = dict(rngs=rngs, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype)
    self.dec_norm1 = RMSNorm(width, **kw)
    self.dec_fc1 = Dense(width, width, ("embed", "mlp"), use_bias=True, **kw)
    self.dec_norm2 = RMSNorm(width, **kw)
    self.dec_fc2 = Dense(width, width, ("mlp", "embed"), use_bias=True, **kw)

  def encode(self, tokens: jax.Array) -> jax.Array:
    """tokens [B, T] → the last position's hidden state [B, D] after the block stack (no final norm)."""
    return self.lm.hidden(tokens)[0][:, -1]

  def __call__(self, tokens: jax.Array, cache=None):
    """tokens [B, T] int → (logits [B, T, vocab] float32, None); `cache` must be None (no decoding)."""
    if cache is not None:
      raise ValueError("MadAutoEncoder has no decoding cache; call it with cache=None.")
    config = self.lm.config
    h = self.encode(tokens)
    length = tokens.shape[1]
    x = (h[:, None, :].astype(jnp.float32) + sincos_positions(length, config.width)[None]).astype(config.jnp_dtype)
    x = jax.nn.gelu(self.dec_fc1(self.dec_norm1(x)), approximate=False)
    x = jax.nn.gelu(self.dec_fc2(self.dec_norm2(x)), approximate=False)
    return self.lm.logits(x), None


def build_model(task: str, config: ModelConfig, *, seed: int = 0) -> nnx.Module:
  """The MAD model of `task`: ``MadAutoEncoder`` for compression, the causal AtlasLM otherwise."""
  rngs = nnx.Rngs(seed)
  return MadAutoEncoder(config, rngs=rngs) if task == "compression" else AtlasLM(config, rngs=rngs)
