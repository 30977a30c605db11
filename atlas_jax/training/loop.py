"""``train_and_evaluate(config, workdir)``: the whole training job, in the order a reader expects.

mesh → model config → data → abstract state → shardings → jitted init (or resume / fine-tune) → donated train
step → loop (progress, metrics, periodic evaluation and samples, checkpoints) → final evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from atlas_jax.config import ATTENTION_BLOCKS, FINITE_MEMORY_BLOCKS, ModelConfig
from atlas_jax.model import AtlasLM
from atlas_jax.presets import preset_config
from atlas_jax.sampling import generate
from atlas_jax.sharding import logical_rules
from atlas_jax.training import data as data_lib
from atlas_jax.training import mesh as mesh_lib
from atlas_jax.training.checkpoint import Checkpointer, check_compatible, checkpoint_dir, param_shapes
from atlas_jax.training.metrics import MetricWriter, Progress
from atlas_jax.training.optim import learning_rate_schedule, make_optimizer
from atlas_jax.training.step import make_eval_step, make_train_step

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  pass


def divergence_hint(model_config: ModelConfig) -> str:
  """What to try when a loss goes non-finite: for an MLP memory with momentum and without Muon (titans,
  omeganet), the inner optimiser's known divergence and its opt-in bound (README, Models); else ""."""
  mem = model_config.memory
  uses_memory = any(block in FINITE_MEMORY_BLOCKS for block in model_config.blocks)
  if not uses_memory or mem.kind == "linear" or not mem.momentum or mem.muon or mem.max_grad_norm is not None:
    return ""
  return (" An MLP memory with momentum and without Muon can diverge on long sequences (README, Models); "
          "--config.model.overrides.memory.max_grad_norm=1.0 bounds each inner gradient (opt-in, beyond SPEC.md).")


class _Preemption:
  """SIGTERM (how TPU and SLURM announce a preemption) asks the loop to save the current step and stop cleanly.

  One process: the signal handler's flag. Several: Orbax's preemption sync point, so every process stops after
  the same step (a process that stopped alone would leave the others waiting in the next step's collectives).
  """

  def __init__(self, checkpointer: Checkpointer):
    self.checkpointer = checkpointer
    self.signalled = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.signalled
    return self.checkpointer.manager.reached_preemption(step)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def model_config_from(config) -> ModelConfig:
  """The ModelConfig of ``config.model`` (see ``presets.preset_config``)."""
  return preset_config(config.model.preset, config.model.size, config.model.overrides)


def abstract_train_state(model_config: ModelConfig, tx, mesh, rules, seed: int = 0):
  """(graphdef, abstract params, their shardings, abstract optimiser state, its shardings); nothing allocated.

  Runs outside ``jax.set_mesh``: NNX would otherwise read the parameters' logical names as mesh axes.
  """
  abstract = nnx.eval_shape(lambda: AtlasLM(model_config, rngs=nnx.Rngs(seed)))
  graphdef, abstract_params = nnx.split(abstract)
  param_shardings = mesh_lib.state_shardings(abstract_params, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = mesh_lib.like_params(abstract_opt, jax.tree_util.tree_structure(abstract_params),
                                       param_shardings, NamedSharding(mesh, PartitionSpec()))
  return graphdef, abstract_params, param_shardings, abstract_opt, opt_shardings


def _put_batch(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """This process's rows → one global array sharded over the batch axes."""
  global_shape = (batch.shape[0] * jax.process_count(),) + batch.shape[1:]
  return jax.make_array_from_process_local_data(sharding, batch, global_shape)


def _validation(val_tokens, config):
  """(this process's validation dataset, batches per evaluation). The count is the same on every process: each
  batch is one collective step, so a process with a batch more would wait for the others forever. Process p
  reads windows p, p + P, …, so the last process has the fewest and sets the count."""
  processes = jax.process_count()
  if len(val_tokens) < config.data.seq_len + 1:
    raise ValueError(f"the validation split has {len(val_tokens)} tokens, fewer than one sequence of "
                     f"{config.data.seq_len} + 1; raise data.val_fraction (now {config.data.val_fraction}) or use "
                     "more data.")
  make = lambda index: data_lib.make_dataset(val_tokens, config.data.seq_len, config.data.batch_size, seed=0,
                                             process_index=index, process_count=processes, shuffle=False,
                                             repeat=False)
  n = min(config.train.eval_batches, len(make(processes - 1)))
  if n == 0:
    raise ValueError(f"the validation split has fewer than one batch of {config.data.batch_size} × "
                     f"{config.data.seq_len + 1} tokens per process; lower data.batch_size/data.seq_len or raise "
                     "data.val_fraction.")
  return make(jax.process_index()), n


def _check_batches_fit_mesh(config, mesh) -> None:
  """Training and validation batches are split over the mesh's data × fsdp devices: refuse sizes they do not
  divide before step 1 (not at the first evaluation, thousands of steps in)."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  processes = jax.process_count()
  if shards % processes:
    raise ValueError(f"each of the {processes} processes loads its own rows of the batch, so the mesh's data × "
                     f"fsdp = {shards} devices must be a multiple of {processes}; a tensor axis that spans hosts "
                     "would give two processes the same rows. Change mesh.shape.")
  for what, rows in (("data.batch_size × train.grad_accum", config.data.batch_size * config.train.grad_accum),
                     ("data.batch_size (validation batches)", config.data.batch_size)):
    if (rows * processes) % shards:
      raise ValueError(f"{what} × {processes} process(es) = {rows * processes} rows per step, which the mesh's "
                       f"data × fsdp = {shards} devices do not divide; change data.batch_size or mesh.shape.")


def _heads_note(model_config: ModelConfig, mesh) -> str:
  """A warning when the mesh's tensor axis does not divide a head count: the run is correct, but the finite memory
  then runs every head on each device (sharded.py keeps such heads whole), and projections split mid-head."""
  tensor, blocks = mesh.shape["tensor"], set(model_config.blocks)
  counts = {}
  if blocks & {*FINITE_MEMORY_BLOCKS, "kernel_memory"}:
    counts["memory_heads"] = model_config.memory_heads
  if blocks & set(ATTENTION_BLOCKS):
    counts["num_heads"] = model_config.num_heads
  uneven = {name: n for name, n in counts.items() if n % tensor}
  if not uneven:
    return ""
  listed = ", ".join(f"{name} = {n}" for name, n in uneven.items())
  return (f"warning: the mesh's tensor axis ({tensor}) does not divide {listed}: those heads are split mid-head "
          "or not at all, which costs resharding or repeated work; pick a tensor axis that divides the head counts.")


def _check_train_settings(config) -> None:
  """Counts that would fail only after step 1 has compiled (a division by zero), or, for keep_checkpoints, keep
  nothing: Orbax's max_to_keep=0 deletes each checkpoint as it is written."""
  t = config.train
  for name in ("steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
               "grad_accum"):
    if getattr(t, name) < 1:
      raise ValueError(f"train.{name}={getattr(t, name)}; it must be at least 1.")
  for name in ("warmup_steps", "sample_every", "sample_tokens", "lr", "weight_decay", "final_lr_fraction"):
    if not getattr(t, name) >= 0:  # NaN too
      raise ValueError(f"train.{name}={getattr(t, name)}; it must be at least 0.")
  for name, ok, expected in (("b1", 0 <= t.b1 < 1, "in [0, 1)"), ("b2", 0 <= t.b2 < 1, "in [0, 1)"),
                             ("clip_norm", t.clip_norm > 0, "> 0 (a norm of 0 scales every update to 0)"),
                             ("final_lr_fraction", t.final_lr_fraction <= 1, "at most 1")):
    if not ok:
      raise ValueError(f"train.{name}={getattr(t, name)}; it must be {expected}.")


def _check_memory_implementation(model_config: ModelConfig) -> None:
  """A memory pinned to the Pallas kernels that cannot run it fails at step 1's compile; say so before any data
  is read or anything is written to the workdir."""
  finite = any(block in FINITE_MEMORY_BLOCKS for block in model_config.blocks)
  if finite and model_config.memory_implementation == "pallas":
    from pallas_kernels.omega_chunk.ops import unsupported_reason  # lazy: no Pallas import otherwise

    reason = unsupported_reason(model_config.memory, fresh_state=True, dtype=model_config.jnp_dtype)
    if reason:
      raise NotImplementedError(f"memory_implementation='pallas': {reason}; use 'auto' or 'xla'.")


# Model settings that change how the model computes, not what it computes: a resume may change them.
_COMPUTE_ONLY = frozenset({"dtype", "remat", "memory_implementation", "memory_remat", "eta_init"})


def _check_same_model(meta: dict, model_config: ModelConfig) -> None:
  """A resume continues the checkpoint's model: refuse one whose settings differ beyond ``_COMPUTE_ONLY``, even
  with parameters of the same shapes (another preset, momentum, chunk size…); fine-tune with init_from instead."""
  if "model_config" not in meta:
    return
  flat = lambda config: traverse_util.flatten_dict(json.loads(json.dumps(config)), sep=".")  # tuples → lists
  saved, current = flat(meta["model_config"]), flat(model_config.to_dict())
  # Keys the checkpoint lacks are settings added since it was written; it ran with their (older) behaviour.
  changed = [f"{key}: {saved[key]!r} → {current.get(key)!r}" for key in sorted(saved)
             if key not in _COMPUTE_ONLY and saved[key] != current.get(key)]
  if changed:
    raise ValueError("resuming another model than the checkpoint's (" + "; ".join(changed) + "). Restore the "
                     "model settings, or fine-tune from it with init_from in a new workdir.")


def _check_same_data(meta: dict, config, split_tokens: list[int]) -> None:
  """The saved data position means something only for the same data pipeline: refuse a resume that changed it
  (fine-tune with init_from instead, which starts the data afresh). `split_tokens` are this run's training and
  validation token counts: they catch a corpus that changed under the same settings (shards added to a glob, a
  text file edited), while a corpus that only moved (another mount point) still resumes."""
  saved = meta.get("experiment", {}).get("data", {})
  current = json.loads(config.to_json())["data"]
  changed = [f"{key} {saved[key]!r} → {current.get(key)!r}"
             for key in ("source", "tokenizer", "eos_token", "seq_len", "batch_size", "seed", "num_workers",
                         "val_fraction") if key in saved and saved[key] != current.get(key)]
  saved_accum = meta.get("experiment", {}).get("train", {}).get("grad_accum", config.train.grad_accum)
  if saved_accum != config.train.grad_accum:
    changed.append(f"train.grad_accum {saved_accum} → {config.train.grad_accum}")
  if meta.get("process_count", jax.process_count()) != jax.process_count():  # batch_size, windows: per process
    changed.append(f"the process count {meta['process_count']} → {jax.process_count()}")
  if meta.get("split_tokens", split_tokens) != split_tokens:
    changed.append(f"the corpus's training/validation tokens {meta['split_tokens']} → {split_tokens}")
  if changed:
    raise ValueError(f"resuming with other data settings than the checkpoint's ({', '.join(changed)}): its data "
                     "position would point elsewhere. Restore them, or fine-tune from it with init_from in a new "
                     "workdir.")


def _schedule_note(meta: dict, config, step: int) -> str:
  """A resume that changed the learning-rate schedule (more steps, another peak…) is allowed, but its rate jumps:
  say by how much at the resumed step; "" when the schedule is the same."""
  keys = ("steps", "lr", "warmup_steps", "final_lr_fraction")
  saved = meta.get("experiment", {}).get("train", {})
  if not all(key in saved for key in keys) or all(saved[key] == config.train[key] for key in keys):
    return ""
  old = learning_rate_schedule(types.SimpleNamespace(**{key: saved[key] for key in keys}))(step)
  new = learning_rate_schedule(config.train)(step)
  changes = ", ".join(f"{key} {saved[key]} → {config.train[key]}" for key in keys if saved[key] != config.train[key])
  return (f"the learning-rate schedule changed since the checkpoint ({changes}): step {step + 1} learns at "
          f"{float(new):.3g} instead of {float(old):.3g}.")


def _evaluate(eval_step, params, validation, batch_sharding) -> float:
  ds, n = validation
  losses = [float(eval_step(params, _put_batch(ds[i], batch_sharding))) for i in range(n)]
  return float(np.mean(losses))


def _sample(graphdef, params, tokenizer, config) -> str:
  """A sample continuation of ``sample_prompt`` (single-process runs; on several processes the parameters are
  not addressable from one host, so sampling is skipped)."""
  if jax.process_count() > 1:
    return "(sampling is skipped in multi-process runs)"
  prompt_ids = np.asarray(tokenizer.encode(config.train.sample_prompt), np.int32)[None]
  if prompt_ids.shape[1] == 0:
    return ""
  model = nnx.merge(graphdef, jax.device_get(params))
  out = generate(model, jnp.asarray(prompt_ids), config.train.sample_tokens, jax.random.PRNGKey(config.seed),
                 temperature=config.train.sample_temperature, top_k=config.train.sample_top_k)
  return tokenizer.decode(np.asarray(out[0]).tolist())


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Train `config` (an experiment ConfigDict) in `workdir`; resumes from the newest good checkpoint there."""
  if "://" in workdir:
    raise ValueError(f"workdir={workdir!r}: metrics and logs are written as plain files, so the workdir must be a "
                     "local or mounted path (e.g. a bucket mounted with gcsfuse), not a URL.")
  _check_train_settings(config)
  model_config = model_config_from(config)
  _check_memory_implementation(model_config)
  is_main = jax.process_index() == 0
  mesh = mesh_lib.make_mesh(tuple(config.mesh.shape))
  rules = tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes) for name, axes in config.mesh.rules)
  global_batch = config.data.batch_size * config.train.grad_accum * jax.process_count()
  if is_main:
    print(f"model {config.model.preset}/{config.model.size}: {model_config.num_layers} layers × "
          f"{model_config.width}, blocks {sorted(set(model_config.blocks))}; mesh {dict(mesh.shape)}", flush=True)
    note = _heads_note(model_config, mesh)
    if note:
      print(note, flush=True)

  _check_batches_fit_mesh(config, mesh)

  # Data.
  train_tokens, val_tokens, tokenizer = data_lib.load_tokens(config.data, model_config.vocab_size)
  split_tokens = [len(train_tokens), len(val_tokens)]
  per_process_batch = config.data.batch_size * config.train.grad_accum
  train_ds = data_lib.make_dataset(train_tokens, config.data.seq_len, per_process_batch, seed=config.data.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count())
  train_iter = data_lib.make_iterator(train_ds, config.data.num_workers)
  validation = _validation(val_tokens, config)
  if is_main:
    print(f"data: {len(train_tokens):,} training and {len(val_tokens):,} validation tokens "
          f"({config.data.source}, {config.data.tokenizer} tokenizer)", flush=True)

  # Shapes first: abstract state → shardings → jitted init with out_shardings.
  tx = make_optimizer(config.train)
  graphdef, abstract_params, param_shardings, abstract_opt, opt_shardings = abstract_train_state(
      model_config, tx, mesh, rules, config.seed)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
  init_params = jax.jit(lambda: nnx.split(AtlasLM(model_config, rngs=nnx.Rngs(config.seed)))[1],
                        out_shardings=param_shardings)
  init_opt = jax.jit(tx.init, out_shardings=opt_shardings)
  as_target = mesh_lib.with_shardings

  os.makedirs(workdir, exist_ok=True)  # only now: a run refused above leaves no workdir behind
  with jax.set_mesh(mesh), logical_rules(rules):
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints,
                                interval=config.train.checkpoint_every, async_save=config.train.async_checkpoint)
    restored = checkpointer.restore_latest(as_target(abstract_params, param_shardings),
                                           as_target(abstract_opt, opt_shardings))
    if restored is not None:
      step, params, opt_state, meta = restored
      _check_same_model(meta, model_config)
      _check_same_data(meta, config, split_tokens)
      train_iter.set_state(meta["data_state"])
      if is_main:
        print(f"resumed from step {step}", flush=True)
        note = _schedule_note(meta, config, step) if step < config.train.steps else ""
        if note:
          print(note, flush=True)
    else:
      step = 0
      if config.init_from:
        params = _fine_tune_params(config.init_from, as_target(abstract_params, param_shardings))
      else:
        params = init_params()
      opt_state = init_opt(params)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract_params))
    if is_main:
      print(f"parameters: {n_params:,}; tokens per step: {global_batch * config.data.seq_len:,}", flush=True)

    train_step = jax.jit(make_train_step(graphdef, tx, config.train.grad_accum), donate_argnums=(0, 1),
                         out_shardings=(param_shardings, opt_shardings, replicated))
    eval_step = jax.jit(make_eval_step(graphdef))
    writer = MetricWriter(workdir, enabled=is_main, start_step=step)
    progress = Progress(config.train.steps, global_batch * config.data.seq_len, config.train.log_every,
                        stream=sys.stdout if is_main else None)
    meta = {"model_config": model_config.to_dict(), "experiment": json.loads(config.to_json()),
            "split_tokens": split_tokens, "process_count": jax.process_count()}

    def save(step, force=False):
      checkpointer.save(step, params, opt_state, dict(meta, data_state=train_iter.get_state()), force=force)

    def evaluate(step, log: bool = True) -> dict[str, float]:
      val = _evaluate(eval_step, params, validation, batch_sharding)
      results = {"val/loss": val, "val/perplexity": math.exp(min(val, 50.0))}
      if log:
        writer.write(step, results)
      if is_main:
        print(f"step {step}: validation loss {val:.4f}, perplexity {results['val/perplexity']:.2f}", flush=True)
      return results

    results: dict[str, float] = {}
    loss = float("nan")

    def report(step, metrics) -> None:
      """Reads a step's loss (waiting for that step), stops on a non-finite one, prints progress and logs."""
      nonlocal loss
      loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
      if not (math.isfinite(loss) and math.isfinite(grad_norm)):  # a non-finite gradient poisons the update
        raise NonFiniteLossError(
            f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step}; stopping. The last checkpoint "
            f"(step {max(checkpointer.steps(), default='none')}) is intact; lower the learning rate or check "
            "the data." + divergence_hint(model_config))
      progress.update(step, loss, force=step == config.train.steps)
      if step % config.train.log_every == 0:
        writer.write(step, {"train/loss": loss, "train/grad_norm": grad_norm})

    # A step's loss is read after the next step is dispatched, so the device is never idle while the host reads
    # it, logs and fetches the next batch. Steps that save, evaluate or sample read it first: nothing that
    # follows a non-finite loss is saved.
    pending = None
    preemption = _Preemption(checkpointer)
    if is_main and step < config.train.steps:
      print(f"compiling the train step (step {step + 1}'s time includes it)…", flush=True)
    try:
      while step < config.train.steps:
        batch = _put_batch(next(train_iter), batch_sharding)
        params, opt_state, metrics = train_step(params, opt_state, batch)
        step += 1
        if pending is not None:
          report(*pending)
        pending = (step, metrics)
        preempted = preemption.reached(step)
        last = step == config.train.steps
        evaluating = step % config.train.eval_every == 0 or last
        sampling = config.train.sample_tokens and (
            (config.train.sample_every and step % config.train.sample_every == 0) or last)
        saving = step % config.train.checkpoint_every == 0 or last or preempted
        if not (saving or evaluating or sampling):
          continue
        report(*pending)
        pending = None
        if saving:  # before evaluating or sampling, which may fail
          save(step, force=last or preempted)
        if preempted:
          if is_main:
            print(f"stopping at step {step} on SIGTERM (preemption); step {step} is saved: rerun to resume.",
                  flush=True)
          results["preempted"] = True
          break
        if evaluating:
          results = evaluate(step)
        if sampling:
          text = _sample(graphdef, params, tokenizer, config)
          writer.text(step, "sample", text)
          if is_main:
            print(f"sample at step {step}: {text!r}", flush=True)
      if not results:  # resumed at or past train.steps: the final evaluation may not have run (a crash after the save)
        if is_main:
          print(f"step {step} is at or past train.steps = {config.train.steps}: nothing to train; evaluating it.",
                flush=True)
        results = evaluate(step, log=not writer.logged(step, "val/loss"))
    finally:
      preemption.close()
      checkpointer.close()
      writer.close()
  results["train/loss"] = loss
  results["step"] = step
  return results


def _fine_tune_params(path: str, target):
  """Parameters only from another run's newest checkpoint, or from the step folder `path` names (new optimiser;
  any mesh or sequence length)."""
  path, step = os.path.normpath(path), None
  try:
    directory = checkpoint_dir(path, "init_from")
  except FileNotFoundError:
    if not (os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, "meta"))):  # a saved step
      raise
    directory, step = checkpoint_dir(os.path.dirname(path), "init_from"), int(os.path.basename(path))
  checkpointer = Checkpointer(directory, async_save=False, read_only=True)
  try:
    if not checkpointer.steps():
      raise FileNotFoundError(f"init_from={directory!r} holds no checkpoint.")
    if step is not None and step not in checkpointer.steps():
      raise FileNotFoundError(f"init_from={path!r}: {directory} has no step {step}; saved steps: "
                              f"{checkpointer.steps()}.")
    if step is None:
      step, params, _, _ = checkpointer.restore_latest(target)
    else:
      where = f"checkpoint {directory} step {step}"
      check_compatible(checkpointer.read_meta(step), param_shapes(target), where)
      params, _ = checkpointer.restore(step, target)
  finally:
    checkpointer.close()
  print(f"fine-tuning from {directory} step {step} (parameters only)", flush=True)
  return params
