"""Decoding cost vs context length: ATLAS (fixed-size memory state) vs Transformer++ (growing KV cache).

    LD_PRELOAD=libtcmalloc_minimal.so.4 python -m benchmarks.decode            # → RESULTS.md

Both models at the demo's size (2 layers × 128, byte vocabulary). For each context length p we build the decode
state a model would hold after p tokens — ATLAS: its streaming memory state at position p; Transformer++: a KV
cache holding p random keys and values — and time one jitted single-token step (median of --repeats). "state
MiB" is the size of the decode state itself; "step plan MiB" is XLA's memory plan of the step (arguments,
outputs and temporaries); "process RSS MiB" is the whole process's resident memory right after the timed steps
(contexts run in increasing order in one process, ATLAS first). The Transformer stops where its cache no longer
fits in --max_cache_gib.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from atlas_jax.attention import KVCache
from atlas_jax.model import AtlasLM
from atlas_jax.presets import get_preset
from benchmarks import common

_CONTEXTS = flags.DEFINE_list("contexts", ["1024", "16384", "131072", "1048576"], "context lengths")
_REPEATS = flags.DEFINE_integer("repeats", 20, "timed steps (median)")
_MAX_CACHE_GIB = flags.DEFINE_float("max_cache_gib", 4.0, "largest KV cache to allocate")
_WRITE = flags.DEFINE_boolean("write", True, "append the table to benchmarks/RESULTS.md")


def _model(name: str) -> AtlasLM:
  config = get_preset(name, "tiny", vocab_size=257, width=128, num_heads=4, mlp_hidden=384)
  if name != "transformer++":
    config = config.replace(memory=dataclasses.replace(config.memory, chunk_size=64))
  return AtlasLM(config, rngs=nnx.Rngs(0))


def _state_at(model: AtlasLM, context: int):
  """The decode state after `context` tokens (values random where they would be data)."""
  key = jax.random.PRNGKey(1)
  caches = []
  for layer_cache in model.init_cache(1, context + 1):
    mixer, swa = layer_cache
    if isinstance(mixer, KVCache):
      k = jax.random.normal(key, mixer.k.shape, mixer.k.dtype)
      mixer = KVCache(k, k, jnp.where(jnp.arange(mixer.k.shape[1]) < context, jnp.arange(mixer.k.shape[1]), -1),
                      jnp.asarray(context, jnp.int32))
    else:
      mixer = mixer._replace(memory=mixer.memory._replace(position=jnp.asarray(context, jnp.int32)))
    caches.append((mixer, swa))
  return caches


def _mib(tree) -> float:
  return sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)) / 2**20


def main(argv):
  del argv
  rows = []
  for name in ("atlas", "transformer++"):
    model = _model(name)
    graphdef, params = nnx.split(model)
    step = jax.jit(lambda params, token, cache: nnx.merge(graphdef, params)(token, cache))
    for context in (int(c) for c in _CONTEXTS.value):
      if name == "transformer++":
        kv_gib = 2 * model.config.num_layers * context * model.config.width * 4 / 2**30
        if kv_gib > _MAX_CACHE_GIB.value:
          rows.append([name, f"{context:,}", "—", f"KV cache {kv_gib:.1f} GiB > --max_cache_gib", "—", "—"])
          print("  " + " | ".join(rows[-1]), flush=True)
          continue
      print(f"[decode] {name} context={context:,} ...", flush=True)
      cache = _state_at(model, context)
      token = jnp.zeros((1, 1), jnp.int32)
      seconds = common.time_call(step, params, token, cache, repeats=_REPEATS.value)
      plan = common.compiled_peak_bytes(step, params, token, cache)
      rss = common.resident_mib()
      rows.append([name, f"{context:,}", f"{seconds * 1e3:.2f}", f"{_mib(cache):,.2f}",
                   "—" if plan is None else f"{plan / 2**20:,.1f}", "—" if rss is None else f"{rss:,.0f}"])
      del cache
      print("  " + " | ".join(rows[-1]), flush=True)
  body = ("Demo size (2 layers × 128, byte vocabulary), batch 1, float32; one jitted decoding step at each context "
          f"length, median of {_REPEATS.value}.\n\n" +
          common.markdown_table(["model", "context", "ms / token", "decode state MiB", "step plan MiB",
                                 "process RSS MiB"], rows))
  common.report("Decoding vs context length (benchmarks/decode.py)", body, _WRITE.value)


if __name__ == "__main__":
  app.run(main)
