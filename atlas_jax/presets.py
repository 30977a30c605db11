"""Named models of the paper family at sizes tiny, 170m, 340m, 760m, 1.3b (PAPER_NOTES.md, Table 7).

    config = get_preset("atlas", "170m")
    python -m atlas_jax.presets                 # parameter counts of every preset and size (no allocation)

Choices the paper leaves open (SPEC.md §7), fixed here:
- C = 64 and, for the Omega presets, W = 8 (tiny: C = 8, W = 4). W = 8 adds 7 carried rows to each 64-row chunk
  (≈ 1.1× the W = 1 cost, CHUNKED.md §C.9).
- Polynomial presets (omeganet, atlas, atlas++, swla, atlas_mag, atlas_mal) use degree 2 on memory heads of
  K = V = 32 (P = 561), with H = D / 32 heads: degree 2 on K = 64 would give P = 2145 and a 4× larger W2.
  Other memory presets use one memory head per attention head (K = V = D / heads).
- Muon presets (atlas, atlas++, atlas_mag, atlas_mal) use the ``chunk`` update granularity (SPEC.md §3.6): one
  Newton–Schulz per chunk, about the non-Muon cost plus NS/C per token, instead of 78–520× for per-token Muon.
- SWA window 512 at paper sizes (16 at tiny); SwiGLU hidden width 8/3·D rounded up to a multiple of 64.
- The kernel presets (deep_transformer, dot) use the MLP memory on the exponential kernel (SPEC.md §4).
"""

from __future__ import annotations

import dataclasses
import math

from atlas_jax.config import ModelConfig
from atlas_jax.memory.config import MemoryConfig

# size: (layers, width, heads, vocab)
SIZES = {
    "tiny": (2, 64, 4, 256),
    "170m": (12, 768, 16, 32000),
    "340m": (24, 1024, 16, 32000),
    "760m": (24, 1536, 16, 32000),
    "1.3b": (18, 2048, 8, 32000),
}


def _memory(name: str, tiny: bool) -> tuple[str, MemoryConfig, bool]:
  """(block type, memory config, polynomial-heads?) of a preset."""
  c, w = (8, 4) if tiny else (64, 8)
  omega = dict(window=w, chunk_size=c)
  atlas = dict(feature_map="polynomial", degree=2, momentum=True, muon=True, granularity="chunk", **omega)
  table = {
      "transformer++": ("attention", MemoryConfig(), False),
      "swa": ("swa", MemoryConfig(), False),
      "delta": ("memory", MemoryConfig(kind="linear", chunk_size=c), False),
      "titans": ("memory", MemoryConfig(kind="mlp", momentum=True, chunk_size=c), False),
      "omeganet": ("memory", MemoryConfig(kind="mlp", feature_map="polynomial", degree=2, momentum=True, **omega),
                   True),
      "atlas": ("memory", MemoryConfig(kind="mlp", **atlas), True),
      "atlas++": ("memory", MemoryConfig(kind="gated_mlp", **atlas), True),
      "swla": ("memory", MemoryConfig(kind="linear", feature_map="polynomial", degree=2, bias="dot", **omega),
               True),
      "dla": ("memory", MemoryConfig(kind="mlp", bias="dot", chunk_size=c), False),
      "deep_transformer": ("kernel_memory", MemoryConfig(kind="mlp", bias="dot", chunk_size=c), False),
      "dot": ("kernel_memory", MemoryConfig(kind="mlp", bias="l2", **omega), False),
      "atlas_mag": ("mag", MemoryConfig(kind="mlp", **atlas), True),
      "atlas_mal": ("mal", MemoryConfig(kind="mlp", **atlas), True),
  }
  if name not in table:
    raise ValueError(f"unknown preset {name!r}; expected one of {sorted(table)}.")
  return table[name]


PRESETS = ("transformer++", "swa", "delta", "titans", "omeganet", "atlas", "atlas++", "swla", "dla",
           "deep_transformer", "dot", "atlas_mag", "atlas_mal")


def get_preset(name: str, size: str = "tiny", **overrides) -> ModelConfig:
  """The ModelConfig of preset `name` at `size`, with optional field overrides.

  Derived fields follow the overrides: a new width (or num_heads, num_layers, memory_head_dim) re-derives the
  memory heads, the SwiGLU width and the block list unless those are overridden too.
  """
  if size not in SIZES:
    raise ValueError(f"unknown size {size!r}; expected one of {list(SIZES)}.")
  layers, width, heads, vocab = SIZES[size]
  layers = overrides.get("num_layers", layers)
  width = overrides.get("width", width)
  heads = overrides.get("num_heads", heads)
  tiny = size == "tiny"
  block, memory, poly = _memory(name, tiny)
  mem_dim = overrides.get("memory_head_dim", (16 if tiny else 32) if poly else width // heads)
  config = ModelConfig(
      vocab_size=vocab, width=width, num_layers=layers, blocks=(block,) * layers, num_heads=heads,
      swa_window=16 if tiny else 512, mlp_hidden=64 * math.ceil(8 * width / 3 / 64), memory=memory,
      memory_heads=width // mem_dim, memory_head_dim=mem_dim, scan_layers=not tiny,
      remat="none" if tiny else "full")
  return dataclasses.replace(config, **overrides) if overrides else config


def count_params(config: ModelConfig) -> int:
  """Number of parameters, from abstract shapes only (nothing is allocated)."""
  from flax import nnx  # local: keeps `import atlas_jax.presets` light for config files

  import jax
  import numpy as np

  from atlas_jax.model import AtlasLM

  abstract = nnx.eval_shape(lambda: AtlasLM(config, rngs=nnx.Rngs(0)))
  leaves = jax.tree_util.tree_leaves(nnx.state(abstract, nnx.Param))
  return int(sum(np.prod(leaf.shape) for leaf in leaves))


def preset_config(preset: str, size: str, overrides) -> ModelConfig:
  """A preset at a size with field overrides (a mapping or ConfigDict; ``memory`` nested), unknown keys refused;
  None values are unset (the preset's value stays: experiment configs declare every field as None).

  Overrides go through ``get_preset``, so derived fields follow them (a new num_layers re-derives the block
  list, a new width the heads), exactly as ``get_preset(preset, size, **overrides)``.
  """
  unset = lambda mapping: {key: value for key, value in mapping.items() if value is not None}
  overrides = unset(overrides.to_dict() if hasattr(overrides, "to_dict") else overrides)
  base = get_preset(preset, size)
  if "memory" in overrides:
    memory = unset(overrides.pop("memory"))
    known = {f.name for f in dataclasses.fields(MemoryConfig)}
    unknown = sorted(set(memory) - known)
    if unknown:
      raise ValueError(f"unknown memory override keys: {unknown}.")
    overrides["memory"] = dataclasses.replace(base.memory, **memory)
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"unknown model override keys: {unknown}.")
  if "blocks" in overrides:  # `--config.model.overrides.blocks=memory,swa` arrives as one string (or a 1-tuple)
    blocks = overrides["blocks"]
    blocks = (blocks,) if isinstance(blocks, str) else blocks
    overrides["blocks"] = tuple(name.strip() for item in blocks for name in item.split(","))
  return get_preset(preset, size, **overrides)


def main() -> None:
  sizes = [s for s in SIZES if s != "tiny"]
  print("| preset | " + " | ".join(sizes) + " |")
  print("|---|" + "---|" * len(sizes))
  for name in PRESETS:
    counts = [f"{count_params(get_preset(name, s)) / 1e6:,.0f}M" for s in sizes]
    print(f"| {name} | " + " | ".join(counts) + " |", flush=True)


if __name__ == "__main__":
  main()
