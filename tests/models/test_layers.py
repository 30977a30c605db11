"""Layers against plain formulas: the short convolution's hand-written backward, Dense's 2-d matmul, the memory
layer and the MAG block of SPEC §6 spelled out."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from atlas_jax.layers import Dense, ShortConv
from tests.helpers import perturbed


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


# ------------------------------------------------------------------ the memory layer and MAG block (SPEC §6)


def _rms(z, scale=1.0):
  return z * jax.lax.rsqrt(jnp.mean(z * z, axis=-1, keepdims=True) + 1e-6) * scale


def _memory_layer_formula(layer, config, x):
  """SPEC §6 written out from the layer's parameters, with the memory on the per-token reference path."""
  from atlas_jax.memory import Gates, memory_op
  batch, length, _ = x.shape
  heads, dim = config.memory_heads, config.memory_head_dim
  kernel = layer.conv.kernel[...]
  z = x @ layer.qkv.kernel[...]
  padded = jnp.pad(z, ((0, 0), (kernel.shape[0] - 1, 0), (0, 0)))  # causal: x_{t−j} with zeros before t = 0
  z = sum(kernel[-1 - j] * padded[:, kernel.shape[0] - 1 - j:][:, :length] for j in range(kernel.shape[0]))
  z = jax.nn.silu(z).reshape(batch, length, heads, 3, dim)  # channels (head, {q, k, v}, d)
  unit = lambda a: a / jnp.sqrt(jnp.sum(a * a, -1, keepdims=True) + 1e-6)
  q, k, v = unit(z[..., 0, :]), unit(z[..., 1, :]), z[..., 2, :]
  g = (x @ layer.gates.kernel[...] + layer.gates.bias[...]).reshape(batch, length, heads, 4)  # (α, η, θ, γ)
  gates = Gates(log_alpha=jnp.log(jax.nn.sigmoid(g[..., 0])),
                eta=config.inner_lr_max(False) * jax.nn.sigmoid(g[..., 1]),
                log_theta=jnp.log(jax.nn.sigmoid(g[..., 2])) if config.memory.momentum else None,
                gamma=jax.nn.sigmoid(g[..., 3]))
  weights = {name: getattr(layer, f"init_{name}")[...] for name in layer.weight_names}
  coeffs = jax.nn.softplus(layer.phi_rho[...]) if config.memory.feature_map == "polynomial" else None
  y, _ = memory_op(q, k, v, gates, weights, config=config.memory, feature_coeffs=coeffs, implementation="reference")
  y = _rms(y, layer.y_scale[...]).reshape(batch, length, heads * dim)
  return (y * jax.nn.sigmoid(x @ layer.out_gate.kernel[...])) @ layer.out.kernel[...]


@pytest.mark.parametrize("preset, seed", [("titans", 0), ("atlas", 1), ("omeganet", 2)])
def test_memory_layer_equals_its_formula(preset, seed):
  """Projections, convolution, SiLU, L2 norms, the gate columns (α, η, θ, γ), per-head RMSNorm, output gate and
  projection against SPEC §6 spelled out; float32, the layer's xla memory path against the reference, 2e-4."""
  from atlas_jax.memory_layer import MemoryLayer
  from atlas_jax.presets import get_preset
  config = get_preset(preset, "tiny", memory_heads=2, memory_head_dim=8, width=32, num_heads=2)
  layer = perturbed(MemoryLayer(config, rngs=nnx.Rngs(seed)), seed)
  x = jax.random.normal(jax.random.PRNGKey(seed + 10), (2, 21, 32))
  y, _ = layer(x)
  want = _memory_layer_formula(layer, config, x)
  np.testing.assert_allclose(y, want, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(want))))


def test_mag_block_equals_its_formula():
  """h = RMSNorm(x); x + out(RMSNorm(y_swa(h)) ⊙ σ(RMSNorm(y_mem(h)))) + the SwiGLU sublayer (SPEC §6)."""
  from atlas_jax.blocks import Block
  from atlas_jax.presets import get_preset
  config = get_preset("atlas_mag", "tiny")
  block = perturbed(Block(config, "mag", rngs=nnx.Rngs(3)), 3)
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 19, config.width))
  h = _rms(x, block.norm.scale[...])
  y_mem, _ = block.mixer(h)
  y_swa, _ = block.swa(h)
  mixed = _rms(y_swa, block.norm_swa_out.scale[...]) * jax.nn.sigmoid(_rms(y_mem, block.norm_mem_out.scale[...]))
  x1 = x + mixed @ block.out.kernel[...]
  want = x1 + block.mlp(_rms(x1, block.norm_mlp.scale[...]))
  np.testing.assert_allclose(block(x)[0], want, rtol=1e-5, atol=1e-5)
