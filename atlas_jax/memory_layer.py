"""The memory layer (token mixer) of SPEC.md §6, with the finite memory op or the exponential kernel (§4).

    x (normed) → q, k, v = linear(x) per head (one projection, head-major channels) → causal depthwise conv
      (width 4) → SiLU → L2-normalise q, k
      → gates from x, float32: α = σ(·) (as log α = −softplus(−·)), η = η_max σ(·), θ = σ(·), γ = σ(·)
      → memory → per-head RMSNorm of y → y ⊙ σ(linear(x)) → output projection

Initial gate biases (a design choice): α ≈ 0.999, η ≈ 0.1·η_max (less for memories that diverge at 0.1: see
``ModelConfig.initial_eta_share``), θ ≈ 0.9, γ ≈ 0.95. φ coefficients a_i =
softplus(ρ_i) start at 1/i!; the kernel's inverse temperature 1/τ = softplus(·) starts at √K.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from atlas_jax.config import INITIAL_GATES, ModelConfig
from atlas_jax.kernel_memory import KernelMemoryState, exp_kernel, init_kernel_state, kernel_memory
from atlas_jax.layers import Dense, ShortConv, check_activations, constant, param
from atlas_jax.memory import Gates, MemoryState, feature_dim, init_state, memory_op, weight_shapes

_logit = lambda p: math.log(p / (1.0 - p))


def _inverse_softplus(y: float) -> float:
  return y + math.log(-math.expm1(-y))


class MemoryCache(NamedTuple):
  conv: jax.Array
  memory: MemoryState | KernelMemoryState


class MemoryLayer(nnx.Module):
  """Projections, conv, gates and output path around the memory; owns Φ_init and the φ coefficients."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, kernel: bool = False, project_out: bool = True):
    """kernel: the exponential-kernel memory of SPEC §4 (DeepTransformers, Dot) instead of the finite one.
    project_out: end with the output projection to width D; without it (MAG, which projects after its gate) the
    output is [B, T, H·V]."""
    if kernel:
      config.check_block("kernel_memory")
    mem = config.memory
    width, heads, dim = config.width, config.memory_heads, config.memory_head_dim
    kw = dict(rngs=rngs, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype)
    self.config, self.kernel = config, kernel
    self.heads, self.dim = heads, dim
    self.qkv = Dense(width, 3 * heads * dim, ("embed", "heads"), **kw)
    self.conv = ShortConv(3 * heads * dim, config.conv_width, **kw)
    shares = dict(INITIAL_GATES, eta=config.initial_eta_share)
    bias = jnp.tile(jnp.asarray([_logit(shares[g]) for g in ("alpha", "eta", "theta", "gamma")]), heads)
    self.gates = Dense(width, 4 * heads, ("embed", "heads"), rngs=rngs, use_bias=True, std=0.02,
                       param_dtype=config.jnp_param_dtype)
    self.gates.bias[...] = bias.astype(self.gates.bias.dtype)
    self.out_gate = Dense(width, heads * dim, ("embed", "heads"), **kw)
    self.y_scale = param(rngs, constant(1.0), (heads, dim), ("heads", None), config.jnp_param_dtype)
    self.out = Dense(heads * dim, width, ("heads", "embed"), **kw) if project_out else None

    # Φ_init: one set of fast weights per head. Kernel memories keep only the finite W1 (MLP kind).
    p = dim if kernel else feature_dim(mem, dim)
    shapes = weight_shapes(mem, dim, p, config.memory_mlp_hidden)
    if kernel:
      shapes = {"W1": shapes["W1"]} if mem.kind == "mlp" else {}
    self.weight_names = tuple(shapes)
    for name, shape in shapes.items():
      std = 1.0 / math.sqrt(shape[1])
      init = jax.nn.initializers.normal(std)
      setattr(self, f"init_{name}", param(rngs, init, (heads,) + shape, ("heads", None, None)))
    if not kernel and mem.feature_map == "polynomial":
      rho = [_inverse_softplus(1.0 / math.factorial(i)) for i in range(mem.degree + 1)]
      self.phi_rho = param(rngs, constant(0.0), (heads, mem.degree + 1), ("heads", None))
      self.phi_rho[...] = jnp.tile(jnp.asarray(rho, jnp.float32), (heads, 1))
    if kernel:
      self.inv_temperature_rho = param(rngs, constant(_inverse_softplus(math.sqrt(dim))), (heads,), ("heads",))

  def _init_weights(self):
    return {name: getattr(self, f"init_{name}")[...].astype(jnp.float32) for name in self.weight_names}

  def init_cache(self, batch: int, max_length: int) -> MemoryCache:
    """The streaming state before the first token: the convolution's last inputs and the memory state.
    `max_length` sizes the kernel memory's key cache (the positions it can hold); finite memories ignore it."""
    conv = self.conv.init_state(batch)
    if self.kernel:
      w1 = self._init_weights().get("W1")
      state = init_kernel_state(self.config.memory, w1, batch, self.heads, max_length, self.dim, self.dim,
                                self.config.kernel_normalized)
    else:
      state = init_state(self.config.memory, self._init_weights(), batch, self.dim, self.dim)
    return MemoryCache(conv, state)

  def __call__(self, x: jax.Array, cache: MemoryCache | None = None):
    """x [B, T, D] (already normed) → (y [B, T, D] (or [B, T, H·V] without output projection), cache)."""
    config, mem = self.config, self.config.memory
    check_activations(x, config.width, "MemoryLayer")
    batch, length, _ = x.shape
    if cache is not None and (not isinstance(cache, MemoryCache) or cache.conv.shape[0] != batch):
      got = f"batch {cache.conv.shape[0]}" if isinstance(cache, MemoryCache) else type(cache).__name__
      raise ValueError(f"MemoryLayer: the cache must be this layer's init_cache(batch={batch}, …) or a cache it "
                       f"returned; got {got}.")
    qkv, conv_state = self.conv(self.qkv(x), None if cache is None else cache.conv)
    # Head-major channels (h, {q, k, v}, d): a tensor axis that splits the channels gives each device whole heads.
    qkv = jax.nn.silu(qkv).reshape(batch, length, self.heads, 3, self.dim)
    unit = lambda z: z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-6)
    q, k = unit(qkv[..., 0, :].astype(jnp.float32)), unit(qkv[..., 1, :].astype(jnp.float32))
    v = qkv[..., 2, :]
    logits = self.gates(x.astype(jnp.float32)).reshape(batch, length, self.heads, 4)  # head-major, as qkv
    gates = Gates(log_alpha=-jax.nn.softplus(-logits[..., 0]),
                  eta=config.inner_lr_max(self.kernel) * jax.nn.sigmoid(logits[..., 1]),
                  gamma=jax.nn.sigmoid(logits[..., 3]),
                  log_theta=-jax.nn.softplus(-logits[..., 2]) if mem.momentum else None)
    state = None if cache is None else cache.memory
    if self.kernel:
      inv_t = jax.nn.softplus(self.inv_temperature_rho[...])
      static = None
      if state is None:
        state = init_kernel_state(mem, self._init_weights().get("W1"), batch, self.heads, length, self.dim,
                                  self.dim, config.kernel_normalized)
        static = 0
      y, state = kernel_memory(q, k, v, gates, state, mem, exp_kernel, inv_t,
                               normalized=config.kernel_normalized, static_position=static)
    else:
      coeffs = jax.nn.softplus(self.phi_rho[...]) if mem.feature_map == "polynomial" else None
      # The Pallas kernels start from a fresh state (training, scoring); a cache carries one, which the other
      # paths stream from, so a model pinned to the kernels still decodes.
      impl = config.memory_implementation
      impl = "auto" if impl == "pallas" and cache is not None else impl
      y, state = memory_op(q, k, v, gates, self._init_weights(), config=mem, feature_coeffs=coeffs, state=state,
                           implementation=impl, remat=config.memory_remat)
    # Per-head RMSNorm, output gate, projection.
    y = y.astype(jnp.float32)
    y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + 1e-6) * self.y_scale[...]
    y = y.reshape(batch, length, self.heads * self.dim).astype(config.jnp_dtype)
    y = y * jax.nn.sigmoid(self.out_gate(x))
    y = y if self.out is None else self.out(y)
    return y, (None if cache is None else MemoryCache(conv_state, state))
