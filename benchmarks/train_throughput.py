"""Training throughput per preset at one fixed size: tokens/s and model-FLOP utilisation of a full train step.

    LD_PRELOAD=libtcmalloc_minimal.so.4 python -m benchmarks.train_throughput            # → RESULTS.md

Every preset at the demo's size (2 layers × 128, byte vocabulary, batch 16 × 128 tokens; C = 64 for the
memory presets), plus ATLAS without Muon, which prices the presets' Muon choice (chunk granularity, SPEC.md
§3.6). Per-position Muon is not timed here: at this size it runs Newton–Schulz on a 64 × 153 matrix for every
token of every head (≈ 15 MFLOP each, ~10 TFLOP per step with the backward pass), minutes per step on a CPU;
benchmarks/memory_op.py compares it with chunk granularity on the memory op alone. A step is forward + backward +
AdamW.

Model FLOPs (the headline): ``benchmarks/flops.py``'s ``train_step_flops``: 6 FLOPs per matmul weight per token
(every projection, SwiGLU, gate and convolution kernel and the LM head; not the embedding lookup), causal (or
sliding-window) attention's scores and value mix (masked products not counted), and the memory op's
``memory_flops`` × 3 per memory layer. No optimizer, no rematerialisation. Where flops.py does not cover a
preset's memory (Muon, the gated_mlp kind, the kernel memories) the count and the utilisation are "n/a", with
the dense + attention part alone given. MFU is model FLOPs per second as a share of a 1024³ float32 matmul timed
in the same process (this machine's measured matmul rate, not a datasheet peak).

XLA's count (secondary columns): ``cost_analysis()`` of the compiled one-device step. It counts a scan's or while
loop's body once, not once per iteration, so the memory presets' chunk scans are undercounted, and it includes
what model FLOPs leave out (AdamW, rematerialised recomputation, masked attention products).

On CPU each preset is also timed on --devices XLA host devices (``jax_num_cpu_devices``) with a mesh (data 1,
fsdp 1, tensor N) and the default logical rules, as ``experiments.main`` runs with ``--config.mesh.shape=1,1,N``:
heads and MLP channels split over the devices (XLA:CPU runs a memory layer's chunk scan on about one core, so this
is how a step uses the others).
"""

from __future__ import annotations

import dataclasses

from absl import app, flags
import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from atlas_jax.config import FINITE_MEMORY_BLOCKS
from atlas_jax.model import AtlasLM
from atlas_jax.presets import PRESETS, get_preset
from atlas_jax.sharding import DEFAULT_RULES, logical_rules
from atlas_jax.training.loop import abstract_train_state
from atlas_jax.training.mesh import make_mesh
from atlas_jax.training.step import make_train_step
from benchmarks import common
from benchmarks.flops import matmul_rate, train_step_flops

_PRESETS = flags.DEFINE_list("presets", list(PRESETS), "presets to time")
_STEPS = flags.DEFINE_integer("repeats", 5, "timed steps (median)")
_BATCH = flags.DEFINE_integer("batch", 16, "sequences per step")
_SEQ = flags.DEFINE_integer("seq_len", 128, "tokens per sequence")
_DEVICES = flags.DEFINE_integer("devices", 2, "on CPU, also time each step on this many XLA host devices with a "
                                "tensor axis over them (1: not)")
_WRITE = flags.DEFINE_boolean("write", True, "append the table to benchmarks/RESULTS.md")


def _config(name: str, variant: str = ""):
  config = get_preset(name, "tiny", vocab_size=257, width=128, num_heads=4, mlp_hidden=384)
  if config.blocks[0] in FINITE_MEMORY_BLOCKS + ("kernel_memory",):
    config = config.replace(memory=dataclasses.replace(config.memory, chunk_size=64))
  if variant == "no-muon":
    config = config.replace(memory=dataclasses.replace(config.memory, muon=False, granularity="token"))
  return config


def _measure(config) -> tuple[float, float]:
  """(seconds per step, XLA's FLOP count of the step) on one device."""
  graphdef, params = nnx.split(AtlasLM(config, rngs=nnx.Rngs(0)))
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)
  step = jax.jit(make_train_step(graphdef, tx, 1))
  batch = _batch(config)
  cost = step.lower(params, opt_state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  seconds = common.time_call(step, params, opt_state, batch, repeats=_STEPS.value)
  return seconds, flops


def _measure_split(config, devices: int) -> float:
  """Seconds per step on `devices` host devices with the model split over a tensor axis (the training loop's way)."""
  mesh = make_mesh((1, 1, devices), jax.devices()[:devices])
  tx = optax.adamw(1e-3)
  graphdef, _, param_shardings, _, opt_shardings = abstract_train_state(config, tx, mesh, DEFAULT_RULES)
  params = jax.jit(lambda: nnx.split(AtlasLM(config, rngs=nnx.Rngs(0)))[1], out_shardings=param_shardings)()
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  batch = jax.device_put(_batch(config), NamedSharding(mesh, PartitionSpec()))
  step = jax.jit(make_train_step(graphdef, tx, 1))
  with jax.set_mesh(mesh), logical_rules(DEFAULT_RULES):
    return common.time_call(step, params, opt_state, batch, repeats=_STEPS.value)


def _batch(config):
  return jax.random.randint(jax.random.PRNGKey(0), (_BATCH.value, _SEQ.value + 1), 0, config.vocab_size)


def _gflop(flops: float) -> str:
  return f"{flops / 1e9:,.2f}"


def main(argv):
  del argv
  jax.config.update("jax_num_cpu_devices", max(_DEVICES.value, 1))  # before the backend starts; CPU only
  devices = _DEVICES.value if _DEVICES.value > 1 and jax.default_backend() == "cpu" else 1
  peak = matmul_rate()
  runs = [(name, "") for name in _PRESETS.value]
  if "atlas" in _PRESETS.value:
    runs += [("atlas", "no-muon")]
  rows = []
  tokens = _BATCH.value * _SEQ.value
  for name, variant in runs:
    label = name + (f" ({variant})" if variant else "")
    print(f"[train_throughput] {label} ...", flush=True)
    config = _config(name, variant)
    model = train_step_flops(config, batch=_BATCH.value, length=_SEQ.value)
    seconds, xla_flops = _measure(config)
    mfu = lambda s: "n/a" if model.total is None else f"{100 * model.total / s / peak:.1f}%"
    count = (_gflop(model.total) if model.total is not None else
             f"n/a ({model.missing}; dense + attention {_gflop(model.dense + model.attention)})")
    rows.append([label, f"{seconds * 1e3:,.0f}", f"{tokens / seconds:,.0f}", count, mfu(seconds),
                 _gflop(xla_flops), f"{100 * xla_flops / seconds / peak:.1f}%"])
    if devices > 1:
      split = _measure_split(config, devices)
      rows[-1] += [f"{tokens / split:,.0f}", f"{seconds / split:.2f}×", mfu(split)]
    print("  " + " | ".join(rows[-1]), flush=True)
  columns = ["model", "step ms", "tokens/s", "model GFLOP / step", "MFU", "XLA cost_analysis GFLOP / step "
             "(scan bodies counted once)", "XLA-counted FLOP/s, % of matmul"]
  if devices > 1:
    columns += [f"tokens/s, {devices} host devices", "speed-up", f"MFU, {devices} host devices"]
  body = (f"2 layers × 128, vocab 257, batch {_BATCH.value} × {_SEQ.value}, float32, AdamW; memory presets with "
          f"C = 64. Matmul rate (1024³ f32, this process): {peak / 1e9:,.0f} GFLOP/s. Model GFLOP / step: "
          "benchmarks/flops.py's train_step_flops — 6 × matmul weights (blocks' kernels and the LM head, not the "
          "embedding) × tokens, + causal / sliding-window attention scores and value mix (masked products not "
          "counted) × 3, + the memory op's flops.py count × 3 per memory layer; no optimizer, no "
          "rematerialisation; \"n/a\" where flops.py does not cover the memory (then the dense + attention part "
          "alone is given). MFU: model FLOP/s as a share of the matmul rate. XLA cost_analysis: the compiled "
          "one-device step's FLOP count, which counts a scan's body once, not once per iteration (so the memory "
          "presets' chunk scans are undercounted), and includes AdamW, remat and masked attention products; kept "
          "for comparison with earlier runs." +
          (f" Split columns: the same step on {devices} XLA host devices, mesh (1, 1, {devices}), default logical "
           "rules (heads and MLP channels over the tensor axis; the 257-byte vocabulary replicated); their MFU "
           "uses the same model FLOPs." if devices > 1 else "") + "\n\n" +
          common.markdown_table(columns, rows))
  common.report("Training throughput per preset (benchmarks/train_throughput.py)", body, _WRITE.value)


if __name__ == "__main__":
  app.run(main)
