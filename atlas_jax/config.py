"""Frozen, validated model configuration (one per language model); presets live in ``presets.py``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from atlas_jax import kernel_memory
from atlas_jax.memory.config import MemoryConfig
from atlas_jax.memory.op import IMPLEMENTATIONS

# Block types (SPEC.md §6): the memory layer, global attention, sliding-window attention, memory-as-gate,
# memory-as-layer, and the exponential-kernel memory (DeepTransformer, Dot; SPEC.md §4).
BLOCK_TYPES = ("memory", "attention", "swa", "mag", "mal", "kernel_memory")
FINITE_MEMORY_BLOCKS = ("memory", "mag", "mal")  # a MemoryLayer with the finite memory op
ATTENTION_BLOCKS = ("attention", "swa", "mag", "mal")  # an Attention with RoPE
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# The memory layer's gates at initialisation, σ(bias) (a design choice; η's is ``initial_eta_share``).
INITIAL_GATES = {"alpha": 0.999, "theta": 0.9, "gamma": 0.95}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of an AtlasLM.

  Attributes:
    vocab_size, width (D), num_layers (L).
    blocks: block type of each layer (length L), from BLOCK_TYPES.
    num_heads: attention heads (head_dim = D / num_heads).
    swa_window: sliding-window size of ``swa``/``mag``/``mal`` attention.
    mlp_hidden: SwiGLU hidden width (0: none, the block has no MLP sublayer).
    memory: the memory definition (SPEC.md §1–§3); memory_heads H and memory_head_dim K = V.
    memory_hidden: F, the memory MLP's hidden width (default 4·V).
    eta_max: η = eta_max · σ(·). None picks 1 / (W · κ(k, k)) — one over the window's total squared feature
      norm at initialisation for unit keys: κ(k, k) = Σ_i 1/i! over the polynomial's kept degrees (1 for
      identity φ), e^(1/τ) = e^√K for the exponential kernel — since the l2 inner loss's curvature grows with W
      and with |φ(k)|², and an l2 step η is stable while η · W · κ(k, k) < 2.
    eta_init: η's initial value as a share of eta_max, σ(bias); None picks ``initial_eta_share``'s default.
    conv_width: short causal conv width before the memory.
    kernel_normalized: the kernel memory divides by its v ≡ 1 twin (softmax attention; linear + dot only).
    tie_embeddings: the output head is the embedding table, whose rows then start at N(0, 1/D) and whose input
      rows are scaled by √D (from 2026-11-27 on; a tied checkpoint written before computed without the scale).
    dtype / param_dtype: activation and parameter dtypes (memory state is always float32, and so are the
      parameters of the memory's own math: Φ_init, φ's coefficients and the kernel's temperature).
    scan_layers: run the layers with ``nnx.scan`` over stacked parameters (needs identical block types).
    remat: ``none`` or ``full`` (rematerialise each block in the backward pass).
    memory_implementation: ``auto`` | ``reference`` | ``xla`` | ``pallas`` (see ``atlas_jax.memory.op``; with
      ``pallas``, decoding from a cache runs ``auto``, since the kernels start from a fresh state);
      memory_remat: remat inside the memory scan.
  """

  vocab_size: int = 256
  width: int = 64
  num_layers: int = 2
  blocks: tuple[str, ...] = ("memory", "memory")
  num_heads: int = 4
  swa_window: int = 64
  rope_base: float = 10000.0
  mlp_hidden: int = 192
  memory: MemoryConfig = MemoryConfig()
  memory_heads: int = 4
  memory_head_dim: int = 16
  memory_hidden: int | None = None
  eta_max: float | None = None
  eta_init: float | None = None
  conv_width: int = 4
  kernel_normalized: bool = False
  tie_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat: str = "none"
  memory_implementation: str = "auto"
  memory_remat: bool = True

  def __post_init__(self):
    if isinstance(self.blocks, list):
      object.__setattr__(self, "blocks", tuple(self.blocks))
    if len(self.blocks) != self.num_layers:
      raise ValueError(f"blocks has {len(self.blocks)} entries; num_layers={self.num_layers}.")
    for b in self.blocks:  # first, so a misspelt type is named before the checks that depend on the types
      if b not in BLOCK_TYPES:
        raise ValueError(f"unknown block type {b!r}; expected one of {BLOCK_TYPES}.")
    for name in ("vocab_size", "width", "num_heads", "memory_heads", "memory_head_dim", "conv_width"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)}; expected ≥ 1.")
    if self.mlp_hidden < 0 or (self.memory_hidden is not None and self.memory_hidden < 1):
      raise ValueError(f"mlp_hidden={self.mlp_hidden} (≥ 0; 0 is no MLP), memory_hidden={self.memory_hidden} (≥ 1 "
                       "or None).")
    if self.eta_max is not None and not self.eta_max > 0:
      raise ValueError(f"eta_max={self.eta_max}; expected > 0 (or None for the default bound).")
    if self.width % self.num_heads:
      raise ValueError(f"width={self.width} is not divisible by num_heads={self.num_heads}.")
    if self.dtype not in _DTYPES or self.param_dtype not in _DTYPES:
      raise ValueError(f"dtype={self.dtype!r}, param_dtype={self.param_dtype!r}; expected one of {list(_DTYPES)}.")
    if self.memory_implementation not in IMPLEMENTATIONS:
      raise ValueError(f"memory_implementation={self.memory_implementation!r}; expected one of "
                       f"{IMPLEMENTATIONS}.")
    if self.remat not in ("none", "full"):
      raise ValueError(f"remat={self.remat!r}; expected 'none' or 'full'.")
    if self.scan_layers and len(set(self.blocks)) > 1:
      raise ValueError("scan_layers=True needs every layer to have the same block type; got "
                       f"{sorted(set(self.blocks))}.")
    for block_type in sorted(set(self.blocks)):
      self.check_block(block_type)
    if self.kernel_normalized and "kernel_memory" not in self.blocks:
      raise ValueError("kernel_normalized applies to kernel_memory blocks, and this model has none.")
    if self.swa_window < 1:
      raise ValueError(f"swa_window={self.swa_window}; expected ≥ 1 (tokens each position attends to).")
    if self.eta_init is not None and not 0.0 < self.eta_init < 1.0:
      raise ValueError(f"eta_init={self.eta_init} is σ(η's initial bias); expected a share of eta_max in (0, 1).")

  def check_block(self, block_type: str) -> None:
    """Refuses settings that a `block_type` layer cannot run with. Run for every layer type of the model, and by
    ``Block`` and ``MemoryLayer`` themselves, which may be built with any config."""
    if block_type not in BLOCK_TYPES:
      raise ValueError(f"unknown block type {block_type!r}; expected one of {BLOCK_TYPES}.")
    if block_type == "mag" and self.memory_heads * self.memory_head_dim != self.width:
      raise ValueError("MAG gates attention with the memory output: memory_heads · memory_head_dim must equal "
                       f"width ({self.memory_heads}·{self.memory_head_dim} ≠ {self.width}).")
    if block_type in ATTENTION_BLOCKS and self.head_dim % 2:
      raise ValueError(f"attention heads of width {self.width} / {self.num_heads} = {self.head_dim}: RoPE rotates "
                       "channel pairs, so the head dimension must be even.")
    if block_type == "kernel_memory":  # its checks at construction, not at the first call
      kernel_memory.check_config(self.memory, self.kernel_normalized)
      if self.memory.feature_map != "identity":
        raise ValueError(f"feature_map={self.memory.feature_map!r} with a kernel_memory block: the exponential "
                         "kernel is that block's feature map (SPEC.md §4), and the memory config is shared by "
                         "every memory block; use feature_map='identity'.")

  def inner_lr_max(self, kernel: bool) -> float:
    """η_max actually used (see ``eta_max``) by a finite memory layer, or with `kernel` a kernel memory's."""
    if self.eta_max is not None:
      return self.eta_max
    mem = self.memory
    norm = 1.0
    if kernel:  # the memory layer starts its inverse temperature 1/τ at √K
      norm = math.exp(math.sqrt(self.memory_head_dim))
    elif mem.feature_map == "polynomial":
      norm = sum(1.0 / math.factorial(i) for i in range(1 if mem.drop_constant else 0, mem.degree + 1))
    return 1.0 / (mem.window * norm)

  @property
  def initial_eta_share(self) -> float:
    """σ(η's initial bias): η_init / η_max (``eta_init`` if set).

    0.1 by default. With momentum and without Muon, times (1 − θ_init) = 0.1 and times min(1, 16 / C): heavy
    ball multiplies the step by 1 / (1 − θ) (at 0.1 the Titans memory diverged within 60 tokens of text), and
    inside a chunk every gradient is taken at the anchor, so its steps pile up unchecked (at 0.01 and C = 64
    Titans and OmegaNet diverged after about 400 tokens; at C ≤ 32, or at 0.005, they did not). With the dot
    bias and an MLP memory, times 0.03: nothing pulls the writes back (no error term), each layer's growth feeds
    the other's, and at 0.01 the DLA memory diverged after about 4K tokens. Measured once at initialisation on
    4K tokens of text; tests/models/test_stability.py checks 2K tokens of text for every preset's memory at
    C = 8 and at C = 64. These are starting values: the gates (and φ's coefficients) are trained, and in
    training the MLP memories with momentum and without Muon can still diverge on long sequences (the memory's
    curvature grows with its weights, which no starting share bounds); ``MemoryConfig.max_grad_norm`` is the
    opt-in remedy (README, Models). The share does not depend on the update granularity: with ``chunk`` (the Muon
    presets) Φ is written once per chunk while α decays it at every token, so at the start such a memory writes
    about C times less per token than at ``token`` granularity and mostly decays (ad hoc, 2026-11-27, the atlas
    170m memory at its starting gates over 1,024 tokens: W1's spectral norm 1.50 → 0.54 at chunk granularity,
    → 1.14 at token granularity). η's gate is trained; a share scaled by C would need η_max scaled too.
    """
    if self.eta_init is not None:
      return self.eta_init
    mem, share = self.memory, 0.1
    if mem.momentum and not mem.muon:
      share *= (1.0 - INITIAL_GATES["theta"]) * min(1.0, 16 / mem.chunk_size)
    if mem.bias == "dot" and mem.kind != "linear":
      share *= 0.03
    return share

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def memory_mlp_hidden(self) -> int:
    return self.memory_hidden or 4 * self.memory_head_dim

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    """Plain JSON-able dict (saved with checkpoints)."""
    d = dataclasses.asdict(self)
    d["blocks"] = list(self.blocks)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    """Inverse of ``to_dict``; unknown keys are an error naming them."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown ModelConfig keys: {unknown}.")
    d = dict(d)
    if isinstance(d.get("memory"), dict):
      mem_known = {f.name for f in dataclasses.fields(MemoryConfig)}
      bad = sorted(set(d["memory"]) - mem_known)
      if bad:
        raise ValueError(f"unknown MemoryConfig keys: {bad}.")
      d["memory"] = MemoryConfig(**d["memory"])
    if "blocks" in d:
      d["blocks"] = tuple(d["blocks"])
    return cls(**d)
