"""The jitted train and eval steps (functional: params and optimiser state in, new ones out)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def cross_entropy(graphdef, params, batch):
  """Mean next-token cross-entropy of batch [B, L + 1] (inputs batch[:, :-1], targets batch[:, 1:])."""
  model = nnx.merge(graphdef, params)
  logits, _ = model(batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def make_train_step(graphdef, tx: optax.GradientTransformation, grad_accum: int):
  """step(params, opt_state, batch) → (params, opt_state, metrics); batch [grad_accum · b, L + 1]."""

  def step(params, opt_state, batch):
    grad_fn = jax.value_and_grad(lambda p, b: cross_entropy(graphdef, p, b))
    if grad_accum == 1:
      loss, grads = grad_fn(params, batch)
    else:
      # Micro-batch j is rows j, j + ga, j + 2·ga, …: the batch is split over devices in contiguous blocks, so
      # every device keeps its own rows in every micro-batch (contiguous micro-batches would move between devices).
      micro = batch.reshape((batch.shape[0] // grad_accum, grad_accum) + batch.shape[1:]).swapaxes(0, 1)

      def accumulate(carry, b):
        loss, grads = grad_fn(params, b)
        return jax.tree_util.tree_map(lambda c, x: c + x.astype(jnp.float32), carry, (loss, grads)), None

      zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), (jnp.zeros(()), params))
      (loss, grads), _ = jax.lax.scan(accumulate, zeros, micro)  # summed in float32 whatever the parameter dtype
      loss = loss / grad_accum
      grads = jax.tree_util.tree_map(lambda g, p: (g / grad_accum).astype(p.dtype), grads, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

  return step


def make_eval_step(graphdef):
  return lambda params, batch: cross_entropy(graphdef, params, batch)
