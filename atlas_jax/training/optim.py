"""Optax AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warmup to ``lr`` over ``warmup_steps``, cosine decay to ``lr · final_lr_fraction`` at ``steps``.

  Indexed by optax's update count c = 0, 1, …, the rate of training step k = c + 1: step 1 already learns
  (lr / warmup_steps, or lr without warmup), step ``warmup_steps`` runs at ``lr``, the last step at the final rate.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.lr, warmup_steps=max(1, train_config.warmup_steps),
      decay_steps=max(train_config.steps, train_config.warmup_steps + 1),
      end_value=train_config.lr * train_config.final_lr_fraction)
  return lambda count: schedule(count + 1)


# Parameters never decayed, by name: norm scales, biases (gate biases included), the memory output scale, the φ
# coefficients and the kernel memory's temperature. Matched by name, not by rank: scanned layers stack every
# parameter with a leading layer axis, and some of these are [H, ·] per-head tables.
NO_DECAY = frozenset({"scale", "bias", "y_scale", "phi_rho", "inv_temperature_rho"})


def _name(path) -> str:
  """The parameter's own name: the last key of its path that is not NNX's ``value`` leaf."""
  for key in reversed(path):
    name = getattr(key, "key", getattr(key, "name", None))
    if isinstance(name, str) and name != "value":
      return name
  return ""


def decay_mask(params):
  """Weight decay on weight matrices only: not on norms, biases, gate biases or φ coefficients (``NO_DECAY``)."""
  return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim >= 2 and _name(path) not in NO_DECAY, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(train_config.clip_norm),
      optax.adamw(learning_rate_schedule(train_config), b1=train_config.b1, b2=train_config.b2,
                  eps=1e-8, weight_decay=train_config.weight_decay, mask=decay_mask),
  )
