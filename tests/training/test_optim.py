"""The weight-decay mask (matrices decay; norms, biases, gate biases, φ coefficients and temperatures do not) and
the learning rate of each step."""

import jax
import pytest
from flax import nnx

from atlas_jax.model import AtlasLM
from atlas_jax.presets import get_preset
from atlas_jax.training.aot import default_train_config
from atlas_jax.training.optim import NO_DECAY, decay_mask, learning_rate_schedule


@pytest.mark.parametrize("preset,scan", [("atlas", False), ("atlas", True), ("dot", True)])
def test_decay_mask_by_parameter_name(preset, scan):
  """Scanned layers give every parameter a leading layer axis: a rank rule would decay [L, D] norm scales."""
  _, params = nnx.split(AtlasLM(get_preset(preset, "tiny", scan_layers=scan), rngs=nnx.Rngs(0)), nnx.Param)
  decayed, kept = set(), set()
  for path, flag in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]:
    name = [k.key for k in path if isinstance(getattr(k, "key", None), str)][-1]
    (decayed if flag else kept).add(name)
  assert kept and kept <= NO_DECAY
  assert {"kernel", "embed", "init_W1"} <= decayed and not decayed & NO_DECAY


@pytest.mark.parametrize("warmup", [0, 2])
def test_learning_rate_of_each_step(warmup):
  """Step 1 learns, step warmup_steps reaches lr, the last step runs at lr · final_lr_fraction."""
  config = default_train_config(lr=0.1, final_lr_fraction=0.1, warmup_steps=warmup, steps=10)
  rates = [float(learning_rate_schedule(config)(count)) for count in range(10)]  # steps 1 … 10
  assert rates[0] == pytest.approx(0.1 / max(warmup, 1))
  assert rates[max(warmup, 1) - 1] == pytest.approx(0.1)
  assert rates[-1] == pytest.approx(0.01)
