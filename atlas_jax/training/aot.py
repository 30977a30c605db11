"""Ahead-of-time check of a train step: lower and compile it on a (fake) mesh from abstract shapes only.

    python -m atlas_jax.training.aot --preset=atlas --size=170m --mesh=1,2,4 --fake_devices=8 --grad_accum=8

Proves that the sharding rules fit a paper-size model without allocating it; prints XLA's memory plan per
device and the compiled FLOP count. With fake (CPU) devices the memory op resolves ``auto`` as on CPU (the xla
path): a GPU run with a linear memory may pick the Pallas kernels instead.
"""

from __future__ import annotations

import sys
import types


def default_train_config(**changes) -> types.SimpleNamespace:
  defaults = dict(lr=1e-3, final_lr_fraction=0.1, warmup_steps=100, steps=1000, weight_decay=0.1, b1=0.9, b2=0.95,
                  clip_norm=1.0)
  return types.SimpleNamespace(**{**defaults, **changes})


def compile_train_step(model_config, mesh, rules, batch_size: int, seq_len: int, train_config=None,
                       grad_accum: int = 1):
  """The compiled train step (jax.stages.Compiled) for global batch [batch_size, seq_len + 1], accumulated
  over `grad_accum` micro-batches of batch_size / grad_accum rows (as ``train.grad_accum`` runs it)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from atlas_jax.sharding import logical_rules
  from atlas_jax.training.loop import abstract_train_state
  from atlas_jax.training.mesh import with_shardings as as_target
  from atlas_jax.training.optim import make_optimizer
  from atlas_jax.training.step import make_train_step

  tx = make_optimizer(train_config or default_train_config())
  graphdef, params, param_sh, opt, opt_sh = abstract_train_state(model_config, tx, mesh, rules)
  batch = jax.ShapeDtypeStruct((batch_size, seq_len + 1), jnp.int32,
                               sharding=NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
  with jax.set_mesh(mesh), logical_rules(rules):
    step = jax.jit(make_train_step(graphdef, tx, grad_accum), donate_argnums=(0, 1),
                   out_shardings=(param_sh, opt_sh, NamedSharding(mesh, PartitionSpec())))
    return step.lower(as_target(params, param_sh), as_target(opt, opt_sh), batch).compile()


def main(argv=None) -> None:
  import argparse

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="atlas")
  parser.add_argument("--size", default="170m")
  parser.add_argument("--mesh", default="1,2,4", help="data,fsdp,tensor (-1: the rest)")
  parser.add_argument("--fake_devices", type=int, default=8, help="CPU devices to fake (0: use the real ones)")
  parser.add_argument("--batch", type=int, default=8, help="rows per micro-batch (global, all processes)")
  parser.add_argument("--grad_accum", type=int, default=1, help="micro-batches per step")
  parser.add_argument("--seq_len", type=int, default=4096)
  args = parser.parse_args(argv)
  import jax

  if args.fake_devices:  # jax is already imported (atlas_jax imports it): set its config, not the environment
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.fake_devices)
  from atlas_jax.memory.op import resolve_implementation
  from atlas_jax.presets import count_params, get_preset
  from atlas_jax.sharding import DEFAULT_RULES
  from atlas_jax.training.mesh import make_mesh

  config = get_preset(args.preset, args.size)
  mesh = make_mesh(tuple(int(x) for x in args.mesh.split(",")))
  print(f"{args.preset}/{args.size}: {count_params(config):,} parameters; mesh {dict(mesh.shape)}; "
        f"batch {args.grad_accum} × {args.batch} × {args.seq_len}; memory op on {jax.default_backend()}: "
        f"{resolve_implementation(config.memory_implementation, config.memory)}", flush=True)
  compiled = compile_train_step(config, mesh, DEFAULT_RULES, args.batch * args.grad_accum, args.seq_len,
                                grad_accum=args.grad_accum)
  memory = compiled.memory_analysis()
  if memory is not None:
    total = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
    print(f"per-device memory plan: {total / 2**30:.2f} GiB (arguments {memory.argument_size_in_bytes / 2**30:.2f},"
          f" temporaries {memory.temp_size_in_bytes / 2**30:.2f})")
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost and "flops" in cost:
    print(f"compiled FLOPs per step (per device; a lower bound: XLA counts each scan body once): {cost['flops']:.3e}")
  print("compiled OK")


if __name__ == "__main__":
  main(sys.argv[1:])
