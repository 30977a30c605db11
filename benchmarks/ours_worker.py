"""Times atlas-jax's memory layer at the peer comparison's configuration; prints one JSON line.

Matched to benchmarks/titans_worker.py: width 256, 4 heads of 64, a 2-layer MLP memory with expansion 4, chunk
64, batch 2, Titans' update rule (W = 1, momentum, retention, identity φ, l2). --granularity=chunk reads the
memory at chunk granularity (SPEC.md §3.6), the structure of titans-pytorch with batch_size=64. Peak RSS is the
whole process's, read after the warm-up call (setup, compilation, one call) and after all calls.
"""

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from atlas_jax.memory import MemoryConfig
from atlas_jax.memory_layer import MemoryLayer
from atlas_jax.presets import get_preset
from benchmarks import common


def layer_call(length: int, mode: str, batch: int = 2, granularity: str = "token"):
  """(jitted call, its arguments): the matched layer's forward ("fwd") or the gradient of Σ y² ("bwd")."""
  config = get_preset("titans", "tiny", width=256, memory_heads=4, memory_head_dim=64, memory_hidden=256,
                      memory=MemoryConfig(kind="mlp", chunk_size=64, momentum=True, granularity=granularity))
  # Parameters initialised by one jitted call, as the training loop does (eager init compiles every small op).
  make = lambda: MemoryLayer(config, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  params = jax.jit(lambda: nnx.state(make()))()
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, length, 256))
  apply = lambda params, x: nnx.merge(graphdef, params)(x)[0]
  if mode == "fwd":
    return jax.jit(apply), (params, x)
  return jax.jit(jax.grad(lambda params, x: jnp.sum(apply(params, x) ** 2), argnums=(0, 1))), (params, x)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--length", type=int, required=True)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--mode", choices=["fwd", "bwd"], required=True)
  p.add_argument("--granularity", choices=["token", "chunk"], default="token")
  args = p.parse_args()
  fn, call_args = layer_call(args.length, args.mode, args.batch, args.granularity)
  common.check_finite("memory layer", jax.block_until_ready(fn(*call_args)))  # compile + warm-up
  warm_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*call_args))
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  print(json.dumps({"seconds": seconds, "tokens_per_s": args.batch * args.length / seconds,
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "warm_rss_mib": warm_rss,
                    "jax": jax.__version__}))


if __name__ == "__main__":
  main()
