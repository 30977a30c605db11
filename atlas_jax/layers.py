"""Basic layers (Flax NNX): parameters with logical axes, Dense, RMSNorm, SwiGLU, RoPE, causal short conv.

Parameters are float32 (``param_dtype``); computation runs in ``dtype`` (e.g. bfloat16), norms in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: Axes, dtype=jnp.float32) -> nnx.Param:
  """An nnx.Param initialised by `init(key, shape, dtype)`, annotated with logical axis names `axes`.

  The annotation is metadata only (no eager sharding): the training system turns it into shardings.
  """
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {shape}.")
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=axes, eager_sharding=False)


def check_activations(x: jax.Array, width: int, who: str) -> None:
  """Raise unless x is a floating [batch, length, width] array: a module's input, checked where it enters."""
  if jnp.ndim(x) != 3 or jnp.shape(x)[-1] != width or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ValueError(f"{who} expects x [batch, length, {width}] floating point; got shape {jnp.shape(x)}, dtype "
                     f"{jnp.result_type(x)}.")


def constant(value: float):
  return lambda key, shape, dtype: jnp.full(shape, value, dtype)


class Dense(nnx.Module):
  """y = x W (+ b), W [in, out] with logical axes `axes`."""

  def __init__(self, features_in: int, features_out: int, axes: Axes, *, rngs: nnx.Rngs, use_bias: bool = False,
               std: float | None = None, bias_init: float = 0.0, dtype=jnp.float32, param_dtype=jnp.float32):
    std = 1.0 / math.sqrt(features_in) if std is None else std
    self.kernel = param(rngs, jax.nn.initializers.normal(std), (features_in, features_out), axes, param_dtype)
    self.bias = param(rngs, constant(bias_init), (features_out,), axes[-1:], param_dtype) if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    # As one [rows, in] @ [in, out] matmul: for x [B, T, in], autodiff's weight gradient then contracts rows
    # directly; the 3-d form made XLA:CPU transpose the whole output gradient first (2.3× slower, ad hoc).
    kernel = self.kernel[...].astype(self.dtype)
    y = (x.astype(self.dtype).reshape(-1, x.shape[-1]) @ kernel).reshape(x.shape[:-1] + kernel.shape[1:])
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class RMSNorm(nnx.Module):
  """x / rms(x) · scale over the last axis (float32 inside)."""

  def __init__(self, features: int | tuple[int, ...], *, rngs: nnx.Rngs, axes: Axes = ("embed",),
               eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32):
    shape = (features,) if isinstance(features, int) else tuple(features)
    self.scale = param(rngs, constant(1.0), shape, axes, param_dtype)
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(self.dtype)


class SwiGLU(nnx.Module):
  """down(silu(x W_gate) ⊙ x W_up), hidden width F_mlp."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.gate = Dense(width, hidden, ("embed", "mlp"), **kw)
    self.up = Dense(width, hidden, ("embed", "mlp"), **kw)
    self.down = Dense(hidden, width, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


def rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary embedding of x [B, T, N, hd] at absolute positions [T] (or [B, T]); pairs (i, i + hd/2)."""
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions.astype(jnp.float32)[..., None] * freq  # [..., T, hd/2]
  if angle.ndim == 2:
    angle = angle[None]
  cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class ShortConv(nnx.Module):
  """Causal depthwise convolution of width w over time: y_t = Σ_{j<w} c_j ⊙ x_{t−j}.

  Streaming: the state is the last w − 1 inputs [B, w − 1, channels] (zeros at the sequence start).
  """

  def __init__(self, channels: int, width: int = 4, *, rngs: nnx.Rngs, axes: Axes = (None, "heads"),
               dtype=jnp.float32, param_dtype=jnp.float32):
    # Start near the identity (last tap 1) plus a little noise, so the conv does not scramble keys at init.
    def init(key, shape, dtype):
      base = jnp.zeros(shape, dtype).at[-1].set(1.0)
      return base + 0.1 / math.sqrt(width) * jax.random.normal(key, shape, dtype)

    self.kernel = param(rngs, init, (width, channels), axes, param_dtype)
    self.width = width
    self.dtype = dtype

  def init_state(self, batch: int, dtype=None) -> jax.Array:
    return jnp.zeros((batch, self.width - 1, self.kernel.shape[-1]), dtype or self.dtype)

  def __call__(self, x: jax.Array, state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """x [B, T, channels] → (y [B, T, channels], new state)."""
    if state is None:
      state = self.init_state(x.shape[0], x.dtype)
    full = jnp.concatenate([state.astype(x.dtype), x], axis=1)  # [B, w − 1 + T, ch]
    y = _causal_conv(full, self.kernel[...].astype(self.dtype))
    return y.astype(self.dtype), full[:, full.shape[1] - (self.width - 1):]


@jax.custom_vjp
def _causal_conv(full: jax.Array, kernel: jax.Array) -> jax.Array:
  """y_t = Σ_j kernel_j ⊙ full_{t+j} for full [B, w − 1 + T, ch], kernel [w, ch] → y [B, T, ch].

  Kernel row w − 1 multiplies x_t, row w − 1 − j multiplies x_{t−j}.
  """
  length = full.shape[1] - kernel.shape[0] + 1
  return sum(full[:, j:j + length] * kernel[j] for j in range(kernel.shape[0]))


def _causal_conv_forward(full, kernel):
  return _causal_conv(full, kernel), (full, kernel)


def _causal_conv_backward(residuals, dy):
  """Only dy is shifted. Autodiff's kernel gradient Σ_t full_{t+j} dy_t sliced `full` w times, and XLA:CPU
  computed those slices right after the forward's projection and held them through the memory scan
  (w × [B, T, ch]: 72 MiB of the peer layer's 396 MiB plan at T = 4096)."""
  full, kernel = residuals
  width = kernel.shape[0]
  # dy placed at tap j's offset: shifted[j][:, t + j] = dy[:, t], zero elsewhere ([B, w − 1 + T, ch]).
  shifted = [jnp.pad(dy, ((0, 0), (j, width - 1 - j), (0, 0))) for j in range(width)]
  dfull = sum(s * kernel[j] for j, s in enumerate(shifted))
  dkernel = jnp.stack([jnp.sum(full * s, axis=(0, 1)) for s in shifted])  # Σ_s full_s shifted[j]_s
  return dfull.astype(full.dtype), dkernel.astype(kernel.dtype)


_causal_conv.defvjp(_causal_conv_forward, _causal_conv_backward)
