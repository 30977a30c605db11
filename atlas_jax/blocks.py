"""Residual blocks (SPEC.md §6): memory, attention, sliding-window attention, MAG, MAL, kernel memory.

Every block is pre-norm: x ← x + mixer(RMSNorm(x)), then x ← x + SwiGLU(RMSNorm(x)) when mlp_hidden > 0.
    memory / kernel_memory : mixer = MemoryLayer (finite memory op / exponential kernel)
    attention / swa        : mixer = causal softmax attention, global / last `swa_window` tokens
    mag (memory as gate)   : h = RMSNorm(x); o = out(RMSNorm(y_swa(h)) ⊙ σ(RMSNorm(y_mem(h))))
    mal (memory as layer)  : x ← x + mem(RMSNorm(x)); x ← x + swa(RMSNorm(x))
In MAG, y_mem is the memory layer's output before its projection, so it keeps that layer's own output gate
y ⊙ σ(linear(h)) (SPEC.md §6's memory layer) inside the σ(RMSNorm(·)) gate; y_swa is the heads' output before
attention's projection. MAC (memory as context, optional in SPEC.md §6) is not implemented.
"""

from __future__ import annotations

import jax
from flax import nnx

from atlas_jax.attention import Attention
from atlas_jax.config import ModelConfig
from atlas_jax.layers import Dense, RMSNorm, SwiGLU, check_activations
from atlas_jax.memory_layer import MemoryLayer
from atlas_jax.sharding import constrain

_ACTIVATION_AXES = ("batch", "length", "embed")


class Block(nnx.Module):
  """One layer of type `block_type` (see the module docstring)."""

  def __init__(self, config: ModelConfig, block_type: str, *, rngs: nnx.Rngs):
    config.check_block(block_type)  # `config.blocks` need not list this type: check it here
    width = config.width
    kw = dict(rngs=rngs, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype)
    attn = lambda window, project_out=True: Attention(width, config.num_heads, window=window,
                                                      rope_base=config.rope_base, project_out=project_out, **kw)
    self.block_type, self.width = block_type, width
    self.norm = RMSNorm(width, **kw)
    swa = None
    if block_type in ("memory", "kernel_memory"):
      self.mixer = MemoryLayer(config, rngs=rngs, kernel=block_type == "kernel_memory")
    elif block_type == "attention":
      self.mixer = attn(None)
    elif block_type == "swa":
      self.mixer = attn(config.swa_window)
    elif block_type == "mag":
      self.mixer = MemoryLayer(config, rngs=rngs, project_out=False)
      swa = attn(config.swa_window, project_out=False)
      self.norm_swa_out = RMSNorm(width, **kw)
      self.norm_mem_out = RMSNorm(width, **kw)
      self.out = Dense(width, width, ("heads", "embed"), **kw)
    elif block_type == "mal":
      self.mixer = MemoryLayer(config, rngs=rngs)
      swa = attn(config.swa_window)
      self.norm_swa_in = RMSNorm(width, **kw)
    self.swa = swa
    self.mlp = SwiGLU(width, config.mlp_hidden, **kw) if config.mlp_hidden else None
    self.norm_mlp = RMSNorm(width, **kw) if config.mlp_hidden else None

  def init_cache(self, batch: int, max_length: int):
    """(mixer cache, sliding-window attention cache or None): what ``__call__`` takes and returns as `cache`.
    `max_length` bounds the positions a full-attention or kernel-memory cache holds."""
    swa = None if self.swa is None else self.swa.init_cache(batch, max_length)
    return (self.mixer.init_cache(batch, max_length), swa)

  def __call__(self, x: jax.Array, cache=None):
    """x [B, T, D] → (x [B, T, D], the updated cache, or None without one); cache: ``init_cache``'s pair."""
    check_activations(x, self.width, f"Block({self.block_type!r})")
    mixer_cache, swa_cache = (None, None) if cache is None else cache
    h = self.norm(x)
    if self.block_type == "mag":
      y_mem, mixer_cache = self.mixer(h, mixer_cache)
      y_swa, swa_cache = self.swa(h, swa_cache)
      x = x + self.out(self.norm_swa_out(y_swa) * jax.nn.sigmoid(self.norm_mem_out(y_mem)))
    else:
      y, mixer_cache = self.mixer(h, mixer_cache)
      x = x + y
      if self.block_type == "mal":
        y, swa_cache = self.swa(self.norm_swa_in(x), swa_cache)
        x = x + y
    if self.mlp is not None:
      x = x + self.mlp(self.norm_mlp(x))
    x = constrain(x, _ACTIVATION_AXES)
    return x, (None if cache is None else (mixer_cache, swa_cache))
