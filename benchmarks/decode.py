"""Decoding cost vs context length: ATLAS (fixed-size memory state) vs Transformer++ (growing KV cache).

    LD_PRELOAD=libtcmalloc_minimal.so.4 python -m benchmarks.decode            # → RESULTS.md

Both models at the demo's size (2 layers × 128, byte vocabulary). For each context length p we build the decode
state a model would hold after p tokens — ATLAS: its streaming memory state at position p; Transformer++: a KV
cache holding p random keys and values (with room for the timed tokens) — and time jitted single-token steps
(median of --repeats after one warm-up step). The step donates the decode state (``donate_argnums``) and each
step's returned state feeds the next, as in real decoding: the position advances by one per step (p … p +
repeats), and the KV cache is updated in place instead of being copied into a new one at every step. "state
MiB" is the size of the decode state itself; "step plan MiB" is XLA's memory plan of the step (arguments,
outputs and temporaries, less the donated state that the outputs reuse); "process RSS MiB" is the whole
process's resident memory right after the timed steps (contexts run in increasing order in one process, ATLAS
first). A Transformer++ context whose KV cache would exceed --max_cache_gib is not allocated: its row says so,
with the cache's size, instead of trying to exhaust the machine's memory.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atlas_jax.attention import KVCache
from atlas_jax.model import AtlasLM
from atlas_jax.presets import get_preset
from benchmarks import common

_CONTEXTS = flags.DEFINE_list("contexts", ["1024", "16384", "131072", "1048576", "4194304"], "context lengths")
_REPEATS = flags.DEFINE_integer("repeats", 20, "timed steps (median)")
_MAX_CACHE_GIB = flags.DEFINE_float("max_cache_gib", 4.0, "largest Transformer++ KV cache to allocate (GiB); "
                                    "longer contexts are reported as skipped, with their cache size")
_WRITE = flags.DEFINE_boolean("write", True, "append the table to benchmarks/RESULTS.md")


def _model(name: str) -> AtlasLM:
  config = get_preset(name, "tiny", vocab_size=257, width=128, num_heads=4, mlp_hidden=384)
  if name != "transformer++":
    config = config.replace(memory=dataclasses.replace(config.memory, chunk_size=64))
  return AtlasLM(config, rngs=nnx.Rngs(0))


def _state_at(model: AtlasLM, context: int, room: int):
  """The decode state after `context` tokens (values random where they would be data), with KV caches sized for
  `room` more tokens."""
  key = jax.random.PRNGKey(1)
  caches = []
  for layer_cache in model.init_cache(1, context + room):
    mixer, swa = layer_cache
    if isinstance(mixer, KVCache):
      k = jax.random.normal(key, mixer.k.shape, mixer.k.dtype)
      slots = jnp.arange(mixer.k.shape[1])
      mixer = KVCache(k, k, jnp.where(slots < context, slots, -1), jnp.asarray(context, jnp.int32))
    else:
      mixer = mixer._replace(memory=mixer.memory._replace(position=jnp.asarray(context, jnp.int32)))
    caches.append((mixer, swa))
  # One buffer per leaf: the step donates the state, and a buffer passed twice (shared by init_cache's leaves, or
  # k and v here) cannot be donated.
  return jax.tree_util.tree_map(jnp.copy, caches)


def _kv_cache_gib(model: AtlasLM, context: int) -> float:
  """Size of the Transformer++ KV cache after `context` tokens: keys and values, every layer, float32."""
  return 2 * model.config.num_layers * context * model.config.width * 4 / 2**30


def _mib(tree) -> float:
  return sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)) / 2**20


def _time_steps(step, params, token, cache, repeats: int):
  """(median seconds per step, the last state): one warm-up step, then `repeats` timed ones, each taking the state
  the previous one returned (the donated input is gone after the call)."""
  logits, cache = step(params, token, cache)
  common.check_finite("decode step (warm-up)", jax.block_until_ready(logits))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    logits, cache = step(params, token, cache)
    jax.block_until_ready((logits, cache))
    times.append(time.perf_counter() - start)
  common.check_finite("decode step (last timed)", logits)
  return statistics.median(times), cache


def _machine_memory_gib() -> float | None:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  except (ValueError, OSError, AttributeError):
    return None


def main(argv):
  del argv
  rows = []
  room = _REPEATS.value + 1  # the warm-up and the timed steps write positions p … p + repeats
  for name in ("atlas", "transformer++"):
    model = _model(name)
    graphdef, params = nnx.split(model)
    step = jax.jit(lambda params, token, cache: nnx.merge(graphdef, params)(token, cache), donate_argnums=2)
    for context in (int(c) for c in _CONTEXTS.value):
      if name == "transformer++":
        kv_gib = _kv_cache_gib(model, context)
        if kv_gib > _MAX_CACHE_GIB.value:
          skipped = f"skipped: KV cache {kv_gib:,.1f} GiB exceeds --max_cache_gib={_MAX_CACHE_GIB.value:g}"
          rows.append([name, f"{context:,}", skipped, f"{kv_gib * 1024:,.2f} (not allocated)", "—", "—"])
          print("  " + " | ".join(rows[-1]), flush=True)
          continue
      print(f"[decode] {name} context={context:,} ...", flush=True)
      cache = _state_at(model, context, room)
      token = jnp.zeros((1, 1), jnp.int32)
      state_mib = _mib(cache)
      plan = common.compiled_peak_bytes(step, params, token, cache)  # before the timed steps donate `cache`
      seconds, cache = _time_steps(step, params, token, cache, _REPEATS.value)
      rss = common.resident_mib()
      rows.append([name, f"{context:,}", f"{seconds * 1e3:.2f}", f"{state_mib:,.2f}",
                   "—" if plan is None else f"{plan / 2**20:,.1f}", "—" if rss is None else f"{rss:,.0f}"])
      del cache
      print("  " + " | ".join(rows[-1]), flush=True)
  memory = _machine_memory_gib()
  body = ("Demo size (2 layers × 128, byte vocabulary), batch 1, float32; jitted single-token decoding steps at each "
          f"context length p, median of {_REPEATS.value} after a warm-up step, each step taking the state the "
          "previous one returned (donated: updated in place), so the timed steps run at positions p + 1 … "
          f"p + {_REPEATS.value}. Transformer++ contexts whose KV cache (2 · layers · p · width · 4 bytes) would "
          f"exceed --max_cache_gib={_MAX_CACHE_GIB.value:g} are not run; their row gives the cache's size"
          + (f" (this machine: {memory:,.1f} GiB of RAM)" if memory else "") + ".\n\n" +
          common.markdown_table(["model", "context", "ms / token", "decode state MiB", "step plan MiB",
                                 "process RSS MiB"], rows))
  common.report("Decoding vs context length (benchmarks/decode.py)", body, _WRITE.value)


if __name__ == "__main__":
  app.run(main)
