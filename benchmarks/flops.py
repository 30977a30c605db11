"""Model FLOPs: the chunked memory op without Muon (CHUNKED.md §C.9), a whole model's train step built on it, and
the matmul rate they are compared with.

Memory op. Per chunk per head, N = C + W − 1 slots, [l2] = 1 for the l2 bias, m̄ = 1 with momentum, FLOPs = 2
per multiply-add; coefficients add 2C²N (Λ) and, with momentum, 2C³ (J):

    linear:  2NPV·[l2] + 2CPV(1+m̄) + 2CN(P+V) + 2NPV(1+m̄)
    mlp:     2NPF + 2NFV(1+[l2]) + 2CF(P+V)(1+m̄) + 2CN(P+2F+V) + 2NF(V+P)(1+m̄)

P is the width of φ(k): K for identity φ, ``feature_dim`` for the polynomial map (whose own elementwise cost is
not counted). Not covered: Muon (Newton–Schulz per position or per chunk), the gated_mlp kind, the exponential
kernel memory (DeepTransformers, Dot).

Train step (``train_step_flops``; the convention of Kaplan et al. / PaLM for model-FLOP utilisation, with the
causal mask honoured):
- dense: 6 FLOPs per matmul weight per token (2 per multiply-add, × 3 for forward + backward): every ``kernel``
  parameter of the blocks (projections, SwiGLU, gates, the memory layers' depthwise convolution: one
  multiply-add per weight per token) plus the LM head (the embedding table when tied). Not counted: the
  embedding lookup, norms, biases, elementwise ops, Φ_init (read once per sequence), the optimizer update, and
  the recomputation of rematerialisation;
- attention scores: per attention layer 2 products (QKᵀ and the value mix) × 2 FLOPs × d (the heads' width) ×
  the keys each query sees, summed over positions: t + 1 for causal attention (so 6·d·(T + 1) per token
  forward + backward on average, half of PaLM's unmasked 12·d·T), min(t + 1, w) for a sliding window of w;
- memory: ``memory_flops`` × 3 (forward + backward) per memory layer, or None where it does not cover the
  memory (the reason is kept).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from atlas_jax.config import ATTENTION_BLOCKS, FINITE_MEMORY_BLOCKS, ModelConfig
from atlas_jax.memory import MemoryConfig, feature_dim
from benchmarks import common


def memory_flops(config: MemoryConfig, *, batch: int, length: int, heads: int, key_dim: int, value_dim: int,
                 hidden: int = 0) -> float:
  """Forward model FLOPs of the memory op over [B, T] tokens (P = K for identity φ, feature_dim for polynomial)."""
  if config.muon:
    raise ValueError("memory_flops counts the non-Muon path (Muon adds Newton–Schulz per position, §C.9).")
  c, p, v, f = config.chunk_size, feature_dim(config, key_dim), value_dim, hidden
  n = c + config.window - 1
  l2 = 1 if config.bias == "l2" else 0
  m = 1 if config.momentum else 0
  if config.kind == "linear":
    per_chunk = 2 * n * p * v * l2 + 2 * c * p * v * (1 + m) + 2 * c * n * (p + v) + 2 * n * p * v * (1 + m)
  elif config.kind == "mlp":
    per_chunk = (2 * n * p * f + 2 * n * f * v * (1 + l2) + 2 * c * f * (p + v) * (1 + m)
                 + 2 * c * n * (p + 2 * f + v) + 2 * n * f * (v + p) * (1 + m))
  else:
    raise ValueError(f"memory_flops covers kind 'linear' and 'mlp'; got {config.kind!r}.")
  per_chunk += 2 * c * c * n + 2 * c**3 * m
  return per_chunk * (length / c) * heads * batch


def matmul_rate(size: int = 1024, dtype=jnp.float32, repeats: int = 10) -> float:
  """FLOP/s of a size³ matmul in this process (all cores / the whole accelerator)."""
  a = jnp.ones((size, size), dtype)
  f = jax.jit(lambda a: a @ a)
  return 2 * size**3 / common.time_call(f, a, repeats=repeats)


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """Model FLOPs of one train step (forward + backward), by part; memory is None where flops.py does not cover the
  model's memory, and then `missing` names what is not covered (and `total` is None)."""
  dense: float
  attention: float
  memory: float | None
  missing: str = ""

  @property
  def total(self) -> float | None:
    return None if self.memory is None else self.dense + self.attention + self.memory


def dense_weights(config: ModelConfig) -> int:
  """Matmul weights used once per token: every ``kernel`` parameter (blocks' projections, SwiGLU, gates, the
  memory layers' convolution, the LM head), plus the embedding table when it is the (tied) head. From abstract
  shapes only; scanned layers' stacked kernels count every layer."""
  from flax import nnx  # local: the model is only needed here

  from atlas_jax.model import AtlasLM

  abstract = nnx.eval_shape(lambda: AtlasLM(config, rngs=nnx.Rngs(0)))
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(abstract, nnx.Param)):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if "kernel" in names:
      total += int(np.prod(leaf.shape))
  if config.tie_embeddings:
    total += config.vocab_size * config.width
  return total


def attention_flops(config: ModelConfig, block: str, *, batch: int, length: int) -> float:
  """Forward FLOPs of one block's attention scores and value mix over [B, T] (masked products not counted)."""
  window = None if block == "attention" else config.swa_window
  t = np.arange(length, dtype=np.float64) + 1  # keys seen by the query at position t − 1
  keys = float(np.sum(t if window is None else np.minimum(t, window)))
  return 2 * 2 * config.width * keys * batch


def train_step_flops(config: ModelConfig, *, batch: int, length: int) -> StepFlops:
  """Model FLOPs of a forward + backward over [B, T] tokens (module docstring: 3× the forward)."""
  tokens = batch * length
  dense = 6.0 * dense_weights(config) * tokens
  attention = sum(3 * attention_flops(config, b, batch=batch, length=length)
                  for b in config.blocks if b in ATTENTION_BLOCKS)
  memory = 0.0
  for b in config.blocks:
    if b == "kernel_memory":
      return StepFlops(dense, attention, None, "kernel memory")
    if b in FINITE_MEMORY_BLOCKS:
      if config.memory.muon:
        return StepFlops(dense, attention, None, "Muon")
      if config.memory.kind not in ("linear", "mlp"):
        return StepFlops(dense, attention, None, f"{config.memory.kind} memory")
      memory += 3 * memory_flops(config.memory, batch=batch, length=length, heads=config.memory_heads,
                                 key_dim=config.memory_head_dim, value_dim=config.memory_head_dim,
                                 hidden=config.memory_mlp_hidden)
  return StepFlops(dense, attention, memory)
