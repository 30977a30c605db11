"""Times atlas-jax's memory layer at the peer comparison's configuration; prints one JSON line.

Matched to benchmarks/titans_worker.py: width 256, 4 heads of 64, a 2-layer MLP memory with expansion 4, chunk
64, batch 2, Titans' update rule (W = 1, momentum, retention, identity φ, l2). --granularity=chunk reads the
memory at chunk granularity (SPEC.md §3.6), the structure of titans-pytorch with batch_size=64. --devices=2 runs the
layer on two XLA host devices (``jax_num_cpu_devices``) with its heads split over a tensor axis, as the training
loop shards a model (atlas_jax.sharding.DEFAULT_RULES): each device runs the memory of two heads (one chunk scan
runs its small products on about one core, BENCHMARKS.md). Peak RSS is the whole process's, read after the
warm-up call (setup, compilation, one call) and after all calls.
"""

import argparse
import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from atlas_jax.memory import MemoryConfig
from atlas_jax.memory_layer import MemoryLayer
from atlas_jax.presets import get_preset
from atlas_jax.sharding import DEFAULT_RULES, logical_rules
from atlas_jax.training.mesh import make_mesh, state_shardings
from benchmarks import common


def layer_call(length: int, mode: str, batch: int = 2, granularity: str = "token", devices: int = 1):
  """(jitted call, its arguments): the matched layer's forward ("fwd") or the gradient of Σ y² ("bwd"); on
  `devices` > 1, a mesh (data 1, fsdp 1, tensor `devices`) shards the parameters by their logical axes."""
  config = get_preset("titans", "tiny", width=256, memory_heads=4, memory_head_dim=64, memory_hidden=256,
                      memory=MemoryConfig(kind="mlp", chunk_size=64, momentum=True, granularity=granularity))
  # Parameters initialised by one jitted call, as the training loop does (eager init compiles every small op).
  make = lambda: MemoryLayer(config, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  make_state = lambda: nnx.state(make())
  params = jax.jit(make_state)()
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, length, 256))
  if devices > 1:
    mesh = make_mesh((1, 1, devices))
    params = jax.device_put(params, state_shardings(nnx.eval_shape(make_state), mesh, DEFAULT_RULES))
    x = jax.device_put(x, NamedSharding(mesh, PartitionSpec()))

  apply = lambda params, x: nnx.merge(graphdef, params)(x)[0]
  fn = jax.jit(apply if mode == "fwd" else jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2), argnums=(0, 1)))
  if devices == 1:
    return fn, (params, x)

  def on_mesh(*args):  # traced (first call) and run inside the mesh and logical rules, as the training loop does
    with jax.set_mesh(mesh), logical_rules(DEFAULT_RULES):
      return fn(*args)

  return on_mesh, (params, x)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--length", type=int, required=True)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--mode", choices=["fwd", "bwd"], required=True)
  p.add_argument("--granularity", choices=["token", "chunk"], default="token")
  p.add_argument("--devices", type=int, default=1, help="XLA host devices, the layer's heads split over them")
  args = p.parse_args()
  jax.config.update("jax_num_cpu_devices", args.devices)  # before the backend starts
  fn, call_args = layer_call(args.length, args.mode, args.batch, args.granularity, args.devices)
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
