"""Basic layers against plain formulas: the short convolution's hand-written backward, Dense's 2-d matmul."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atlas_jax.layers import Dense, ShortConv


def _plain_conv(x, state, kernel):
  """y_t = Σ_j kernel_j ⊙ full_{t+j}, full = [state; x], differentiated by autodiff."""
  full = jnp.concatenate([state, x], axis=1)
  length = x.shape[1]
  return sum(full[:, j:j + length] * kernel[j] for j in range(kernel.shape[0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("width", [1, 4])
def test_short_conv_matches_autodiff(seed, width):
  """Outputs, new state and gradients (input, streaming state, kernel) at float32, to 1e-5 relative."""
  conv = ShortConv(6, width, rngs=nnx.Rngs(seed))
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(keys[0], (2, 9, 6))
  state = jax.random.normal(keys[1], (2, width - 1, 6))
  weight = jax.random.normal(keys[2], (2, 9, 6))  # a loss that weights every output differently
  kernel = conv.kernel[...]

  y, new_state = conv(x, state)
  np.testing.assert_allclose(y, _plain_conv(x, state, kernel), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(new_state, jnp.concatenate([state, x], axis=1)[:, 9:], rtol=0, atol=0)

  graphdef, params = nnx.split(conv)
  ours = lambda x, state, params: jnp.sum(nnx.merge(graphdef, params)(x, state)[0] * weight)
  dx, dstate, dparams = jax.grad(ours, argnums=(0, 1, 2))(x, state, params)
  want = jax.grad(lambda *a: jnp.sum(_plain_conv(*a) * weight), argnums=(0, 1, 2))(x, state, kernel)
  for g, w in zip((dx, dstate, dparams["kernel"][...]), want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_dense_on_three_axes_matches_einsum():
  dense = Dense(5, 7, ("embed", "mlp"), rngs=nnx.Rngs(0), use_bias=True, bias_init=0.5)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 5))
  want = jnp.einsum("btd,df->btf", x, dense.kernel[...]) + 0.5
  np.testing.assert_allclose(dense(x), want, rtol=1e-6, atol=1e-6)
