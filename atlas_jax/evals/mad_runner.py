"""Train and score atlas-jax presets on the MAD synthetic tasks (EVALS_NOTES.md §1.8; athms/mad-lab protocol).

    results = run_mad("atlas", tasks=("in-context-recall",), scale="reduced", out_dir="/tmp/mad")

Model: the preset at MAD's width 128 and depth 2 (one atlas-jax block = sequence mixer + SwiGLU, so
``num_layers=2``), vocabulary = the task's. The compression task uses MAD's auto-encoder head
(``mad_model.MadAutoEncoder``): the block stack encodes the sequence, the last position is kept, ``h = e + pos_sincos(t)``
for every output position t goes through the fixed decoder RMSNorm → Linear(D, D) → GELU → RMSNorm →
Linear(D, D) → GELU and the model's own final RMSNorm + un-embedding.

Training (per setting and per (lr, wd) run): AdamW (β = 0.9, 0.999, ε = 1e-8; decay on matrices only), cosine
annealing stepped per epoch from lr to 1e-6 over the scale's epochs, batch 128, cross-entropy over targets
≠ −100; after every epoch the test split is scored (macro accuracy, MAD's metric, and micro accuracy) and
training stops once macro accuracy reaches 0.999; the reported accuracy is the final model's. Every setting
keeps the best run (``mad_score``); a task's score is the mean over its settings, the overall score the mean
over tasks. Weights and data order depend on `seed`; the data on MAD's seed 12345 only.

Scales:
* "full": the MAD protocol — every setting (66), lr ∈ {1e-4, 5e-4, 1e-3} × wd ∈ {0, 0.1}, 200 epochs, batch 128,
  MAD's split sizes (12,800 train / 1,280 test; sweeps change the train size), the preset's "170m" family
  (16 attention heads, memory chunk 64) at width 128 and 2 layers, bfloat16 activations on an accelerator.
  396 runs of up to 20k steps each: a GPU job.
* "reduced": a CPU smoke run — the baseline setting of each task, 256 train / 64 test instances (memorization:
  its 256 / 64), one run (lr 1e-3, wd 0), 2 epochs (16 steps), batch 32, the preset's "tiny" family (memory
  chunk 8, window 4, SWA 16) at width 32 with 2 attention heads and memory heads of K = 8, float32. About
  3 minutes for all six tasks with "atlas" on 2 busy CPU cores (under a minute with "transformer++"; at width 64
  with K = 16 an "atlas" step costs ~7× more). Accuracies stay near chance at this budget: it checks the
  pipeline, not the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from atlas_jax.evals import mad
from atlas_jax.evals.mad import IGNORE, MadSetting
from atlas_jax.evals.mad_model import MAD_WIDTH, build_model, mad_model_config
from atlas_jax.markdown import markdown_table
from atlas_jax.training.optim import decay_mask

MIN_LR = 1e-6  # end of the cosine schedule
TARGET_ACCURACY = 0.999  # early stop once the test macro accuracy reaches this
FULL_LR_GRID = ((1e-4, 0.0), (1e-4, 0.1), (5e-4, 0.0), (5e-4, 0.1), (1e-3, 0.0), (1e-3, 0.1))


@dataclasses.dataclass(frozen=True)
class RunScale:
  """How much of the protocol to run (settings come from ``mad.settings(task, name)``)."""

  name: str
  epochs: int
  batch_size: int
  lr_grid: tuple[tuple[float, float], ...]
  size: str  # preset size whose derived fields (heads, chunk size, windows) the model starts from
  overrides: tuple[tuple[str, Any], ...]  # model overrides on top of vocab_size, width and depth


RUN_SCALES = {
    "full": RunScale("full", epochs=200, batch_size=128, lr_grid=FULL_LR_GRID, size="170m",
                     overrides=(("width", MAD_WIDTH),)),
    "reduced": RunScale("reduced", epochs=2, batch_size=32, lr_grid=((1e-3, 0.0),), size="tiny",
                        overrides=(("width", 32), ("num_heads", 2), ("memory_head_dim", 8))),
}


def masked_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross-entropy over positions with targets ≠ −100 (0 if there are none); logits [..., V]."""
  keep = targets != IGNORE
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(keep, targets, 0))
  return jnp.sum(ce * keep) / jnp.maximum(jnp.sum(keep), 1)


def _optimizer() -> optax.GradientTransformation:
  # lr and weight decay are injected state (set per run and per epoch), so one compiled step serves every run.
  # The mask is static: inject_hyperparams would otherwise call it as a schedule of the step count.
  return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, mask=decay_mask)


def _make_steps(graphdef, tx):
  """Jitted (train_step, predict) for one model structure."""

  def loss_fn(params, rest, inputs, targets):
    logits, _ = nnx.merge(graphdef, params, rest)(inputs)
    return masked_cross_entropy(logits, targets)

  @jax.jit
  def train_step(params, rest, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, inputs, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def predict(params, rest, inputs):
    logits, _ = nnx.merge(graphdef, params, rest)(inputs)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  return train_step, predict


def _strong(leaf):
  """`leaf` as a strongly typed array (Python scalars and weakly typed arrays would retrace the step once)."""
  leaf = jnp.asarray(leaf)
  return jnp.asarray(leaf, leaf.dtype)


def _cosine_lr(lr: float, epoch: int, epochs: int) -> float:
  """torch CosineAnnealingLR(T_max=epochs, eta_min=1e-6) at `epoch`, stepped once per epoch."""
  return MIN_LR + (lr - MIN_LR) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _batches(inputs: np.ndarray, targets: np.ndarray, order: np.ndarray, batch_size: int):
  """Fixed-shape batches: the last one is padded with rows whose targets are all −100 (no loss, no score)."""
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    x, t = inputs[idx], targets[idx]
    if len(idx) < batch_size:
      pad = batch_size - len(idx)
      x = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)])
      t = np.concatenate([t, np.full((pad, t.shape[1]), IGNORE, t.dtype)])
    yield x, t, len(idx)


def _evaluate(predict, params, rest, data: mad.MadData, batch_size: int) -> dict[str, float]:
  order = np.arange(len(data.test_inputs))
  preds = [np.asarray(predict(params, rest, x))[:n]
           for x, _, n in _batches(data.test_inputs, data.test_targets, order, batch_size)]
  preds = np.concatenate(preds)
  return {"macro": mad.macro_accuracy(preds, data.test_targets), "micro": mad.micro_accuracy(preds, data.test_targets)}


def train_run(steps, params0, rest, data: mad.MadData, *, lr: float, weight_decay: float, epochs: int,
                       batch_size: int, seed: int = 0, log: Callable[[str], None] = print,
                       prefix: str = "") -> dict[str, Any]:
  """One MAD run from the initial parameters `params0`: train ≤ `epochs`, score the test split after each epoch.

  Returns {"lr", "weight_decay", "macro", "micro", "epochs", "loss", "seconds"} (accuracies of the final model).
  """
  train_step, predict = steps
  tx = _optimizer()
  params = params0
  # Strongly typed leaves: the state a step returns then matches the first one (one compilation per setting).
  opt_state = jax.tree_util.tree_map(_strong, tx.init(params))
  opt_state.hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
  order_rng = np.random.default_rng(seed)
  start, loss, scores, epoch = time.time(), float("nan"), {}, 0
  report_every = max(1, epochs // 10)
  for epoch in range(1, epochs + 1):
    opt_state.hyperparams["learning_rate"] = jnp.asarray(_cosine_lr(lr, epoch - 1, epochs), jnp.float32)
    order = order_rng.permutation(len(data.train_inputs))
    losses = []
    for x, t, _ in _batches(data.train_inputs, data.train_targets, order, batch_size):
      params, opt_state, batch_loss = train_step(params, rest, opt_state, jnp.asarray(x), jnp.asarray(t))
      losses.append(batch_loss)
    loss = float(np.mean(jax.device_get(losses)))
    if not math.isfinite(loss):
      raise FloatingPointError(f"{prefix} lr={lr} wd={weight_decay}: training loss became {loss} at epoch {epoch}.")
    scores = _evaluate(predict, params, rest, data, batch_size)
    done = scores["macro"] >= TARGET_ACCURACY
    if done or epoch % report_every == 0 or epoch == epochs:
      log(f"{prefix} lr={lr:g} wd={weight_decay:g} epoch {epoch}/{epochs} loss {loss:.4f} "
          f"acc {scores['macro']:.4f} (micro {scores['micro']:.4f}) {time.time() - start:.0f}s")
    if done:
      break
  return {"lr": lr, "weight_decay": weight_decay, "macro": scores["macro"], "micro": scores["micro"],
          "epochs": epoch, "loss": loss, "seconds": round(time.time() - start, 2)}


def run_settings(preset: str, task_settings: Mapping[str, Sequence[MadSetting]], *, out_dir: str | None,
                 lr_grid: Sequence[tuple[float, float]], epochs: int, batch_size: int = 128, size: str = "170m",
                 overrides: Mapping[str, Any] | None = None, seed: int = 0, scale: str = "custom",
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Run every (lr, wd) of `lr_grid` on every setting; score; write mad_results.{json,md} into `out_dir`.

  Args:
    preset: an atlas-jax preset name (``atlas_jax.presets.PRESETS``).
    task_settings: {task: [MadSetting, ...]} (e.g. ``{t: mad.settings(t, "full") for t in mad.TASKS}``).
    out_dir: where the result files go (None: do not write).
    lr_grid: (learning rate, weight decay) pairs; each setting keeps its best run.
    epochs, batch_size: training length and batch.
    size, overrides: the model is ``mad_model_config(preset, setting.vocab_size, size=size, overrides=...)``.
    seed: weight init and data order (the data use MAD's seed 12345).
    scale: recorded in the results.
    log: progress sink (one line per run and a few per run's epochs).

  Returns:
    {"preset", "scale", "seed", "epochs", "batch_size", "lr_grid", "size", "overrides", "tasks": {task:
    {"score", "settings": [{"label", "setting", "best_macro", "best_micro", "chance", "leakage", "runs"}]}},
    "mean_score"}.
  """
  if not lr_grid:
    raise ValueError("lr_grid is empty; expected at least one (lr, weight_decay) pair.")
  if epochs < 1 or batch_size < 1:
    raise ValueError(f"epochs={epochs}, batch_size={batch_size}; expected positive integers.")
  overrides = dict(overrides or {})
  results: dict[str, Any] = {
      "preset": preset, "scale": scale, "seed": seed, "epochs": epochs, "batch_size": batch_size,
      "lr_grid": [list(p) for p in lr_grid], "size": size,
      "overrides": {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in overrides.items()},
      "tasks": {}}
  for task, task_list in task_settings.items():
    entries = []
    for setting in task_list:
      if setting.task != task:
        raise ValueError(f"setting {setting} listed under task {task!r}.")
      prefix = f"[{preset} {task} {setting.label}]"
      log(f"{prefix} generating {setting.num_train} train / {setting.num_test} test instances")
      data = mad.generate(setting)
      config = mad_model_config(preset, setting.vocab_size, size=size, overrides=overrides)
      model = build_model(task, config, seed=seed)
      graphdef, params0, rest = nnx.split(model, nnx.Param, ...)
      steps = _make_steps(graphdef, _optimizer())
      runs = [train_run(steps, params0, rest, data, lr=lr, weight_decay=wd, epochs=epochs,
                                 batch_size=batch_size, seed=seed, log=log, prefix=prefix) for lr, wd in lr_grid]
      best = max(runs, key=lambda r: r["macro"])
      log(f"{prefix} best acc {best['macro']:.4f} (lr={best['lr']:g}, wd={best['weight_decay']:g})")
      entries.append({"label": setting.label, "setting": dataclasses.asdict(setting), "best_macro": best["macro"],
                      "best_micro": best["micro"], "chance": 1.0 / setting.answer_classes,
                      "leakage": data.leakage, "runs": runs})
    score = mad.mad_score([[r["macro"] for r in e["runs"]] for e in entries])
    results["tasks"][task] = {"score": score, "settings": entries}
    log(f"[{preset} {task}] MAD score {score:.4f}")
  scores = [t["score"] for t in results["tasks"].values()]
  results["mean_score"] = float(np.mean(scores)) if scores else float("nan")
  if out_dir is not None:
    write_results(results, out_dir)
  return results


def results_markdown(results: Mapping[str, Any]) -> str:
  """Per-task tables (each setting's best accuracy, the task's MAD score) and the overall mean."""
  lines = [f"# MAD results: {results['preset']} ({results['scale']} scale)", "",
           f"Epochs ≤ {results['epochs']}, batch {results['batch_size']}, (lr, wd) grid {results['lr_grid']}, "
           f"model size family {results['size']!r}, overrides {results['overrides']}, seed {results['seed']}. "
           "Accuracy = macro accuracy on the test split (MAD's metric), best run per setting.", ""]
  for task, entry in results["tasks"].items():
    rows = []
    for s in entry["settings"]:
      best = max(s["runs"], key=lambda r: r["macro"])
      rows.append([s["label"], f"{s['best_macro']:.4f}", f"{s['best_micro']:.4f}", f"{s['chance']:.4f}",
                   f"{best['lr']:g}", f"{best['weight_decay']:g}", best["epochs"]])
    rows.append(["**MAD score**", f"**{entry['score']:.4f}**"] + [""] * 5)
    lines += [f"## {task}", "", markdown_table(["setting", "accuracy", "micro", "chance", "best lr", "best wd",
                                                "epochs"], rows), ""]
  rows = [[task, f"{entry['score']:.4f}"] for task, entry in results["tasks"].items()]
  rows.append(["**mean**", f"**{results['mean_score']:.4f}**"])
  lines += ["## Summary", "", markdown_table(["task", "MAD score"], rows), ""]
  return "\n".join(lines)


def write_results(results: Mapping[str, Any], out_dir: str) -> None:
  """Write ``mad_results.json`` and ``mad_results.md`` into `out_dir` (created if missing)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "mad_results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out_dir, "mad_results.md"), "w") as f:
    f.write(results_markdown(results))


def run_mad(preset: str, *, tasks: Iterable[str] = mad.TASKS, scale: str = "reduced", out_dir: str | None,
            seed: int = 0, epochs: int | None = None, lr_grid: Sequence[tuple[float, float]] | None = None,
            overrides: Mapping[str, Any] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Score `preset` on MAD at `scale` ("full" | "reduced", see the module docstring); writes the result files.

  Args:
    preset: an atlas-jax preset name, e.g. "atlas", "transformer++".
    tasks: a subset of ``mad.TASKS`` (default: all six).
    scale: "full" (the MAD protocol, a GPU job) or "reduced" (baseline settings, a CPU smoke run).
    out_dir: directory for mad_results.json / mad_results.md (None: do not write).
    seed: weight init and data order.
    epochs, lr_grid: replace the scale's epochs / (lr, weight decay) grid.
    overrides: ModelConfig field overrides on top of the scale's (e.g. {"dtype": "bfloat16"} or
      {"memory": {"chunk_size": 16}}); vocab_size is always the task's.
  Returns:
    the results dict of ``run_settings`` (per task: each setting's runs and best accuracy, the MAD score;
    "mean_score" over tasks).
  """
  if scale not in RUN_SCALES:
    raise ValueError(f"scale={scale!r}; expected one of {tuple(RUN_SCALES)}.")
  tasks = tuple(tasks)
  unknown = [t for t in tasks if t not in mad.TASKS]
  if unknown or not tasks:
    raise ValueError(f"tasks={tasks}; expected a non-empty subset of {mad.TASKS}.")
  run_scale = RUN_SCALES[scale]
  model_overrides = dict(run_scale.overrides)
  if scale == "full" and jax.default_backend() != "cpu":
    model_overrides["dtype"] = "bfloat16"  # MAD trains in bf16; parameters and memory state stay float32
  model_overrides.update(overrides or {})
  return run_settings(preset, {t: mad.settings(t, scale) for t in tasks}, out_dir=out_dir,
                      lr_grid=tuple(lr_grid or run_scale.lr_grid), epochs=epochs or run_scale.epochs,
                      batch_size=run_scale.batch_size, size=run_scale.size, overrides=model_overrides, seed=seed,
                      scale=scale, log=log)
