"""AtlasLM: embedding → blocks (type per layer from the config) → RMSNorm → logits.

    logits, cache = model(tokens)                       # training / scoring (cache is None)
    cache = model.init_cache(batch, max_length)
    logits, cache = model(prompt, cache=cache)          # prefill
    logits, cache = model(next_token[:, None], cache)   # one decoding step

Layers are either a list of blocks or, with ``scan_layers``, one stacked block run by ``nnx.scan`` (parameters
get a leading "layers" axis). ``remat="full"`` rematerialises each block in the backward pass.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atlas_jax.blocks import Block
from atlas_jax.config import ModelConfig
from atlas_jax.layers import Dense, RMSNorm, param
from atlas_jax.sharding import constrain


def check_tokens(tokens, vocab_size: int) -> None:
  """Raise if concrete token ids fall outside [0, vocab_size) (never clip silently). Traced ids cannot raise:
  ``AtlasLM`` embeds those as NaN, so the logits (and a loss) show them."""
  if isinstance(tokens, jax.core.Tracer):
    return
  arr = np.asarray(tokens)
  if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    raise ValueError(f"token ids must lie in [0, {vocab_size}); found {bad.size} outside, e.g. {bad[:5].tolist()}.")


class AtlasLM(nnx.Module):
  """A language model over `config.blocks`."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    # Untied: rows ~ N(0, 1). Tied, the head's logits are h · e for unit-RMS h, so the rows start at N(0, 1/D)
    # (logits of unit variance) and the input embedding is scaled back up by √D.
    std = 1.0 / math.sqrt(config.width) if config.tie_embeddings else 1.0
    self.embed = param(rngs, jax.nn.initializers.normal(std), (config.vocab_size, config.width),
                       ("vocab", "embed"), config.jnp_param_dtype)
    if config.scan_layers:
      @nnx.split_rngs(splits=config.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def make(rngs):
        return Block(config, config.blocks[0], rngs=rngs)

      self.layers = make(rngs)
    else:
      self.layers = nnx.List([Block(config, b, rngs=rngs) for b in config.blocks])
    self.final_norm = RMSNorm(config.width, rngs=rngs, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype)
    self.head = None if config.tie_embeddings else Dense(
        config.width, config.vocab_size, ("embed", "vocab"), rngs=rngs, dtype=config.jnp_dtype,
        param_dtype=config.jnp_param_dtype)

  def init_cache(self, batch: int, max_length: int):
    """Decoding state for `max_length` tokens: KV caches for attention, streaming state for memories.

    Size it for the prompt plus every token to come, as ``sampling.generate`` does: attention and the kernel
    memories (DeepTransformers, Dot) return NaN for positions past `max_length` (their caches hold no more;
    under jit this cannot raise). A sliding window's ring with max_length ≥ window has no such bound, and the
    finite memories stream without one."""
    if self.config.scan_layers:
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def stacked(block):
        return block.init_cache(batch, max_length)

      return stacked(self.layers)
    return [layer.init_cache(batch, max_length) for layer in self.layers]

  def __call__(self, tokens: jax.Array, cache=None):
    """tokens [B, T] int → (logits [B, T, vocab] float32, cache or None)."""
    x, cache = self.hidden(tokens, cache)
    return self.logits(x), cache

  def hidden(self, tokens: jax.Array, cache=None):
    """tokens [B, T] int → (the block stack's output [B, T, D] before the final norm, cache or None)."""
    config = self.config
    if jnp.ndim(tokens) != 2 or not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
      raise ValueError(f"tokens must be integer ids of shape [batch, length]; got shape {jnp.shape(tokens)}, dtype "
                       f"{jnp.result_type(tokens)}.")
    check_tokens(tokens, config.vocab_size)
    # Ids outside [0, vocab) embed as NaN (negative ids would otherwise wrap around, as in NumPy).
    tokens = jnp.where(tokens < 0, config.vocab_size, tokens)
    # Gathered whole along D first (FSDP's weight all-gather): rows taken from a D-split table would come out
    # split along D, which XLA can only bring to the batch split by replicating the activations.
    table = constrain(self.embed[...], ("vocab", None), divisible_only=True)
    x = jnp.take(table, tokens, axis=0, mode="fill", fill_value=jnp.nan)
    if config.tie_embeddings:
      x = x * math.sqrt(config.width)
    x = x.astype(config.jnp_dtype)
    x = constrain(x, ("batch", "length", "embed"))
    call = (lambda block, x, c: block(x, c))
    if config.remat == "full":
      call = nnx.remat(call)
    if config.scan_layers:
      @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
      def run(block, x, c):
        return call(block, x, c)

      return run(self.layers, x, cache)
    new_cache = []
    for i, layer in enumerate(self.layers):
      x, c = call(layer, x, None if cache is None else cache[i])
      new_cache.append(c)
    return x, None if cache is None else new_cache

  def logits(self, x: jax.Array) -> jax.Array:
    """Hidden states [..., D] → logits [..., vocab] float32: final norm, then the head (or the tied embedding)."""
    h = self.final_norm(x)
    if self.head is None:
      return h.astype(jnp.float32) @ self.embed[...].astype(jnp.float32).T
    return self.head(h).astype(jnp.float32)
