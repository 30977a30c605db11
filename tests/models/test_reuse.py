"""Reusing the modules from other Flax code, including Linen through ``flax.nnx.bridge``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.nnx import bridge

from atlas_jax.blocks import Block
from atlas_jax.presets import get_preset


class LinenLM(nn.Module):
  """A Linen model with one ATLAS block inside, through the NNX → Linen bridge."""

  vocab: int = 32

  @nn.compact
  def __call__(self, tokens):
    config = get_preset("atlas", "tiny")
    x = nn.Embed(self.vocab, config.width)(tokens)
    x, _ = bridge.ToLinen(Block, args=(config, "memory"))(x)
    return nn.Dense(self.vocab)(x)


def test_linen_bridge_trains():
  model = LinenLM()
  tokens = jnp.tile(jnp.arange(5), (2, 5))[:, :17]
  variables = model.init(jax.random.PRNGKey(0), tokens[:, :-1])
  assert "ToLinen_0" in variables["params"]
  tx = optax.adam(3e-3)
  params = variables["params"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(params):
      logits = model.apply({"params": params}, tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(10):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses
