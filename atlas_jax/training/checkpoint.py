"""Orbax checkpoints: params, optimiser state, step, data-iterator state and the model config.

Items of one checkpoint (an Orbax Composite; nothing is pickled):
  params     StandardSave of the parameter pytree (restored straight into the target shardings)
  opt_state  StandardSave of the optimiser state
  meta       JSON: step, model config, parameter shapes, data-iterator state
Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save leaves no
listed step. A step that fails to restore (corrupted or partial files) is skipped for the previous one; once one
restores, the failed newer ones are moved aside with a warning, renamed ``unrestorable-<step>-<unix time>`` (kept
for inspection; no longer listed, so their step numbers can be saved again). If no step restores, nothing is
moved and the error says why each failed. A checkpoint of another model is refused with the first mismatching
parameter named.
"""

from __future__ import annotations

import logging
import os
import time

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def param_shapes(params) -> dict[str, list[int]]:
  """{path: shape} of a parameter pytree (pure dict or nnx.State)."""
  return {jax.tree_util.keystr(path): list(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


# How parameters map to computation where shapes alone do not say. 2 (2026-11-27): the memory layers' fused q, k, v
# projection and gate projection have head-major output channels (head, {q, k, v}, d) and (head, gate), so a tensor
# axis gives each device whole heads; layout 1 (no "param_layout" in the meta) grouped them by q, k, v and by gate.
PARAM_LAYOUT = 2


def check_compatible(meta: dict, expected: dict[str, list[int]], where: str) -> None:
  """Raise if the checkpoint with `meta` does not fit parameters of shapes `expected`, naming the first parameter
  whose presence or shape differs, or the layout."""
  layout = meta.get("param_layout", 1)
  if layout != PARAM_LAYOUT:
    raise ValueError(f"{where} has parameter layout {layout}; this version reads layout {PARAM_LAYOUT} (from "
                     "layout 2 on, the memory layers' q, k, v and gate channels are head-major). Its parameters "
                     "have the right shapes but would be read in the wrong order; use the atlas-jax version that "
                     "wrote it.")
  saved = meta.get("param_shapes", {})
  for path in sorted(set(saved) | set(expected)):
    if path not in saved:
      raise ValueError(f"{where} was written by another model: it has no parameter {path} "
                       f"(expected shape {expected[path]}).")
    if path not in expected:
      raise ValueError(f"{where} was written by another model: it has parameter {path} {saved[path]}, "
                       "which this model does not have.")
    if list(saved[path]) != list(expected[path]):
      raise ValueError(f"{where} was written by another model: parameter {path} has shape {saved[path]}, "
                       f"this model expects {expected[path]}.")


def checkpoint_dir(path: str, flag: str = "workdir") -> str:
  """The checkpoint folder of a training run: ``<path>/checkpoints``, or `path` itself when it holds step folders.
  Raises FileNotFoundError naming `flag` when it is neither."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{flag}={path!r} does not exist (expected a training workdir with a checkpoints/ "
                            "folder, or that folder).")
  nested = os.path.join(path, "checkpoints")
  if os.path.isdir(nested):
    return nested
  if any(name.isdigit() for name in os.listdir(path)):
    return path
  raise FileNotFoundError(f"{flag}={path!r} has no checkpoints/ folder and no step folders; is it a training "
                          "workdir (atlas_jax.training.loop.train_and_evaluate writes <workdir>/checkpoints)?")


class Checkpointer:
  """A CheckpointManager with keep-N, a save interval, async saves, resume and corruption fallback.

  read_only: for another run's checkpoints (fine-tuning, evaluation): nothing is created, saved or moved there.
  """

  def __init__(self, directory: str, *, keep: int = 3, interval: int = 1, async_save: bool = True,
               read_only: bool = False):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=interval, create=not read_only,
                                           read_only=read_only, enable_async_checkpointing=async_save)
    self.directory = directory
    self.read_only = read_only
    self.manager = ocp.CheckpointManager(directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, params, opt_state, meta: dict, *, force: bool = False) -> bool:
    meta = dict(meta, step=int(step), param_shapes=param_shapes(params), param_layout=PARAM_LAYOUT)
    return self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta)), force=force)

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_latest(self, abstract_params, abstract_opt_state=None):
    """(step, params, opt_state or None, meta) of the newest step that restores, or None if there is none.

    abstract_*: ShapeDtypeStructs with the target shardings (the restore reshards to them).

    Newer steps that failed are set aside only once an older one restores: that is what tells a damaged step
    from a cause that fails every step (an optimiser of another structure, a file system that is down). When
    every step fails, nothing is moved and the error names each step's failure, so a run never restarts from
    step 0 on top of its own checkpoints.
    """
    failed = []
    for step in reversed(self.steps()):
      where = f"checkpoint {self.directory} step {step}"
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001  (an unreadable step is set aside if an older one restores)
        failed.append((step, f"{where} is unreadable ({type(e).__name__}: {e})"))
        continue
      check_compatible(meta, param_shapes(abstract_params), where)
      try:
        params, opt_state = self.restore(step, abstract_params, abstract_opt_state)
      except Exception as e:  # noqa: BLE001
        failed.append((step, f"{where} could not be restored ({type(e).__name__}: {e})"))
        continue
      for bad_step, why in failed:
        self._set_aside(bad_step, why)
      return step, params, opt_state, meta
    if failed:
      reasons = "\n  ".join(why for _, why in failed)
      raise RuntimeError(f"none of the {len(failed)} checkpoints in {self.directory} restores, so nothing was "
                         f"started or moved:\n  {reasons}\nIf the training settings changed (the optimiser's "
                         "structure, say), restore them or fine-tune from these checkpoints with init_from in a "
                         "new workdir; if the steps are damaged, move them away to start afresh.")
    return None

  def _set_aside(self, step: int, why: str) -> None:
    """Rename an unrestorable step out of the manager's listing (nothing is deleted). Left listed, it would make
    Orbax refuse every later save up to its step number. Read-only: only skipped."""
    if self.read_only:
      log.warning("%s; used the previous one.", why)
      return
    source = self.manager.directory / str(step)
    target = self.manager.directory / f"unrestorable-{step}-{int(time.time())}"
    if jax.process_index() == 0 and source.exists():
      source.rename(target)
    multihost_utils.sync_global_devices(f"checkpoint step {step} set aside")
    self.manager.reload()
    log.warning("%s; moved it to %s and used the previous one.", why, target)

  def restore(self, step: int, abstract_params, abstract_opt_state=None):
    """(params, opt_state or None) of `step`, restored onto the abstract values' shardings (no shape check:
    ``check_compatible`` against ``read_meta(step)`` first)."""
    items = dict(params=ocp.args.StandardRestore(abstract_params))
    if abstract_opt_state is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["params"], restored.get("opt_state") if abstract_opt_state is not None else None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
