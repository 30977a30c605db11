"""The training job end to end: resume after SIGKILL (mid-run and mid-save), NaN stop, fine-tuning, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from atlas_jax.presets import preset_config
from atlas_jax.training import checkpoint, loop
from atlas_jax.training.checkpoint import Checkpointer
from tests.training import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(ROOT, "tests", "training", "tiny_config.py")


def _final_params(workdir: str, step: int):
  manager = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  assert step in manager.steps(), manager.steps()
  import orbax.checkpoint as ocp

  restored = manager.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  manager.close()
  return jax.tree_util.tree_map(np.asarray, restored["params"])


# A child process that trains with tiny_config and sends itself `signal` (SIGKILL unless given) right after
# `Checkpointer.save(kill_step)` returns: with synchronous saves that is after the step is on disk; with async saves
# the write is still in flight, so a SIGKILL kills it mid-save. With hook="preemption", the signal comes at step
# `kill_step`'s preemption check instead (every step has one; saves happen only every `every` steps).
_CHILD = r"""
import os, signal, sys
sys.path.insert(0, {root!r})
from atlas_jax.training import checkpoint, loop
from tests.training import tiny_config
config = tiny_config.get_config()
config.unlock()
config.train.async_checkpoint = {async_save}
config.train.checkpoint_every = {every}
owner, name = (loop._Preemption, "reached") if {hook!r} == "preemption" else (checkpoint.Checkpointer, "save")
original = getattr(owner, name)
def hooked(self, step, *args, **kwargs):
  if {hook!r} == "preemption" and step == {kill_step}:
    os.kill(os.getpid(), {signal})
  out = original(self, step, *args, **kwargs)
  if {hook!r} == "save" and step == {kill_step}:
    os.kill(os.getpid(), {signal})
  return out
setattr(owner, name, hooked)
loop.train_and_evaluate(config, {workdir!r})
"""


def _run_child(workdir, kill_step, async_save, sig=signal.SIGKILL, every=1, hook="save"):
  code = _CHILD.format(root=ROOT, kill_step=kill_step, async_save=async_save, workdir=workdir, signal=int(sig),
                       every=every, hook=hook)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 0), proc.stderr[-3000:]
  return proc


def _assert_same_params(dir_a, dir_b, step):
  a, b = _final_params(dir_a, step), _final_params(dir_b, step)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  results = loop.train_and_evaluate(tiny_config.get_config(), workdir)
  assert results["step"] == 6 and np.isfinite(results["val/loss"])
  return workdir


def _train_rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [row for row in map(json.loads, f) if "train/loss" in row]


def _logged_train_steps(workdir) -> list[int]:
  return [row["step"] for row in _train_rows(workdir)]


def _logged_train_losses(workdir) -> list[float]:
  return [row["train/loss"] for row in _train_rows(workdir)]


def test_resume_after_sigkill_mid_run(tmp_path, straight_run):
  killed = str(tmp_path / "killed")
  _run_child(killed, kill_step=3, async_save=False)
  assert max(Checkpointer(os.path.join(killed, "checkpoints"), async_save=False).steps()) == 3
  assert loop.train_and_evaluate(tiny_config.get_config(), killed)["step"] == 6
  _assert_same_params(straight_run, killed, 6)


def test_resume_after_sigkill_during_a_save(tmp_path, straight_run):
  killed = str(tmp_path / "killed_saving")
  _run_child(killed, kill_step=4, async_save=True)
  steps = Checkpointer(os.path.join(killed, "checkpoints"), async_save=False).steps()
  assert 4 not in steps and max(steps) == 3, steps  # the interrupted save left no listed step
  assert _logged_train_steps(killed) == [1, 2, 3, 4]  # step 4 was logged, not saved
  assert loop.train_and_evaluate(tiny_config.get_config(), killed)["step"] == 6
  _assert_same_params(straight_run, killed, 6)
  assert _logged_train_steps(killed) == _logged_train_steps(straight_run) == [1, 2, 3, 4, 5, 6]


def test_sigterm_saves_the_step_and_stops_cleanly(tmp_path, straight_run):
  """A preemption notice between checkpoints: the step it arrives in is saved, the process exits 0, a rerun
  resumes from it and ends with the uninterrupted run's parameters."""
  stopped = str(tmp_path / "preempted")
  proc = _run_child(stopped, kill_step=2, async_save=True, sig=signal.SIGTERM, every=100, hook="preemption")
  assert "stopping at step 2 on SIGTERM" in proc.stdout, proc.stdout[-2000:]
  steps = Checkpointer(os.path.join(stopped, "checkpoints"), async_save=False).steps()
  assert steps == [2], steps  # saved on the notice, not on the interval (100)
  assert loop.train_and_evaluate(tiny_config.get_config(), stopped)["step"] == 6
  _assert_same_params(straight_run, stopped, 6)
  # Between saves each loss is read a step late (step 1 here): every step is still logged once, with the straight
  # run's value.
  assert _logged_train_steps(stopped) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose(_logged_train_losses(stopped), _logged_train_losses(straight_run), rtol=1e-5)


def test_corrupted_latest_checkpoint_is_set_aside_and_its_step_retrained(tmp_path, straight_run, caplog):
  import shutil

  workdir = str(tmp_path / "corrupt")
  shutil.copytree(straight_run, workdir)
  step_dir = os.path.join(workdir, "checkpoints", "6", "params")
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with caplog.at_level("WARNING"):
    results = loop.train_and_evaluate(tiny_config.get_config(), workdir)  # the same 6 steps: step 6 again
  assert results["step"] == 6
  assert any("step 6" in r.getMessage() and "previous" in r.getMessage() for r in caplog.records)
  set_aside = [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.startswith("unrestorable-6-")]
  assert len(set_aside) == 1  # kept for inspection, not listed
  _assert_same_params(straight_run, workdir, 6)  # the retrained step 6 was saved


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
  config = tiny_config.get_config()
  config.unlock()
  config.train.lr = 1e30  # diverges to inf/nan within a few steps
  config.train.clip_norm = 1e30
  workdir = str(tmp_path / "nan")
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss .* at step \d+"):
    loop.train_and_evaluate(config, workdir)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  last = max(checkpointer.steps())
  params = _final_params(workdir, last)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))


def test_a_loss_read_late_still_stops_before_the_next_save(tmp_path, monkeypatch):
  """Between saves a step's loss is read after the next step is dispatched. A NaN loss at step 3 (checkpoints
  every 2 steps) must stop the run before step 4, already computed, is saved."""
  make_step = loop.make_train_step

  def nan_from_step_3(*args):
    step_fn = make_step(*args)

    def poisoned(params, opt_state, batch):
      params, opt_state_out, metrics = step_fn(params, opt_state, batch)
      count = next(x for x in jax.tree_util.tree_leaves(opt_state) if x.ndim == 0 and x.dtype == jnp.int32)
      return params, opt_state_out, dict(metrics, loss=jnp.where(count >= 2, jnp.nan, metrics["loss"]))
    return poisoned

  monkeypatch.setattr(loop, "make_train_step", nan_from_step_3)
  config = tiny_config.get_config()
  config.unlock()
  config.train.checkpoint_every = 2
  config.train.log_every = config.train.eval_every = 100  # step 3 neither logs nor evaluates
  workdir = str(tmp_path / "late")
  with pytest.raises(loop.NonFiniteLossError, match="at step 3;"):
    loop.train_and_evaluate(config, workdir)
  assert Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False).steps() == [2]


def test_non_finite_loss_names_the_memory_bound_for_memories_that_can_diverge():
  """The stop message points titans-like memories (MLP, momentum, no Muon) at max_grad_norm, and only them."""
  hint = lambda preset, **memory: loop.divergence_hint(
      preset_config(preset, "tiny", {"memory": memory} if memory else {}))
  assert "max_grad_norm" in hint("titans") and "max_grad_norm" in hint("omeganet")
  assert hint("titans", max_grad_norm=1.0) == ""
  assert hint("atlas") == "" and hint("delta") == "" and hint("transformer++") == ""


def test_heads_the_tensor_axis_does_not_divide_are_named():
  mesh = loop.mesh_lib.make_mesh((2, 1, 4))
  note = lambda preset, **overrides: loop._heads_note(preset_config(preset, "tiny", overrides), mesh)
  assert note("atlas", memory_heads=8) == note("transformer++", num_heads=8) == ""
  assert "tensor axis (4) does not divide memory_heads = 2" in note("atlas", memory_heads=2, memory_head_dim=32)
  assert note("atlas", num_heads=2) == ""  # no attention in the atlas preset: num_heads is unused
  assert "num_heads = 2" in note("atlas_mag", num_heads=2) and "memory_heads" not in note("atlas_mag", num_heads=2)
  assert loop._heads_note(preset_config("atlas", "tiny", {"memory_heads": 3}), loop.mesh_lib.make_mesh((8, 1, 1))) == ""


def test_fine_tune_with_another_length_and_mesh(tmp_path, straight_run, capsys):
  config = tiny_config.get_config()
  config.unlock()
  config.init_from = os.path.join(straight_run, "checkpoints", "3")  # a chosen step (else the newest)
  config.data.seq_len = 24
  config.mesh.shape = (2, 2, 2)
  config.train.steps = 2
  results = loop.train_and_evaluate(config, str(tmp_path / "finetune"))
  assert results["step"] == 2 and np.isfinite(results["val/loss"])
  assert "checkpoints step 3 (parameters only)" in capsys.readouterr().out


def test_pallas_memory_trains_on_a_mesh_like_xla(tmp_path):
  """A delta model with the Pallas kernels (interpreted) on a 2 × 2 × 2 mesh: each device runs its (batch, heads)
  block under shard_map inside the model's jitted train step; the losses equal the xla path's."""
  results = {}
  for implementation in ("pallas", "xla"):
    config = tiny_config.get_config("delta")
    config.unlock()
    config.model.overrides.memory_implementation = implementation
    config.model.overrides.memory.chunk_size = 16
    config.mesh.shape = (2, 2, 2)
    config.train.steps, config.train.checkpoint_every, config.train.eval_every = 2, 100, 100
    results[implementation] = loop.train_and_evaluate(config, str(tmp_path / implementation))
  for key in ("train/loss", "val/loss"):
    np.testing.assert_allclose(results["pallas"][key], results["xla"][key], rtol=1e-5)


def test_checkpoint_of_another_model_is_refused(tmp_path, straight_run):
  config = tiny_config.get_config()
  config.unlock()
  config.init_from = straight_run  # a workdir works as well as its checkpoints/ folder
  config.model.overrides.mlp_hidden = 96
  with pytest.raises(ValueError, match=r"another model: parameter .*mlp.* has shape"):
    loop.train_and_evaluate(config, str(tmp_path / "other"))


def test_resume_with_other_data_settings_is_refused(tmp_path, straight_run):
  import shutil

  workdir = str(tmp_path / "resume")
  shutil.copytree(straight_run, workdir)
  config = tiny_config.get_config()
  config.unlock()
  config.train.steps = 7
  config.data.num_workers, config.data.seq_len = 2, 24
  with pytest.raises(ValueError, match=r"other data settings than the checkpoint's \(seq_len 16 → 24, num_workers "
                                       r"0 → 2\)"):
    loop.train_and_evaluate(config, workdir)


def test_resume_on_a_changed_corpus_is_refused(tmp_path, straight_run, monkeypatch):
  import shutil

  workdir = str(tmp_path / "resume")
  shutil.copytree(straight_run, workdir)
  load = loop.data_lib.load_tokens

  def shorter(*args, **kwargs):  # the same settings, a corpus with a document fewer (a glob that matched less)
    train, val, tokenizer = load(*args, **kwargs)
    return train[:-100], val, tokenizer

  monkeypatch.setattr(loop.data_lib, "load_tokens", shorter)
  config = tiny_config.get_config()
  config.unlock()
  config.train.steps = 7
  with pytest.raises(ValueError, match=r"other data settings than the checkpoint's \(the corpus's "
                                       r"training/validation tokens \[\d+, \d+\] → \[\d+, \d+\]\)"):
    loop.train_and_evaluate(config, workdir)


def test_resume_of_another_model_with_the_same_shapes_is_refused(tmp_path, straight_run):
  import shutil

  workdir = str(tmp_path / "resume")
  shutil.copytree(straight_run, workdir)
  config = tiny_config.get_config()
  config.unlock()
  config.model.overrides.memory.chunk_size = 4  # the same parameters, another function
  with pytest.raises(ValueError, match=r"resuming another model than the checkpoint's \(memory.chunk_size: 8 → 4\)"):
    loop.train_and_evaluate(config, workdir)


def test_resume_may_change_how_the_model_computes_and_the_schedule(tmp_path, straight_run, capsys):
  import shutil

  workdir = str(tmp_path / "resume")
  shutil.copytree(straight_run, workdir)
  config = tiny_config.get_config()
  config.unlock()
  config.model.overrides.memory_implementation = "reference"
  config.train.steps = 7
  assert loop.train_and_evaluate(config, workdir)["step"] == 7
  out = capsys.readouterr().out
  assert "resumed from step 6" in out
  assert "the learning-rate schedule changed since the checkpoint (steps 6 → 7): step 7 learns at" in out


def test_resume_at_the_last_step_runs_the_final_evaluation(tmp_path, straight_run, capsys):
  """A crash between the last step's save and its evaluation: the rerun trains nothing and evaluates."""
  import shutil

  workdir = str(tmp_path / "done")
  shutil.copytree(straight_run, workdir)
  results = loop.train_and_evaluate(tiny_config.get_config(), workdir)
  assert "nothing to train; evaluating it" in capsys.readouterr().out
  with open(os.path.join(straight_run, "metrics.jsonl"), encoding="utf-8") as f:
    logged = [json.loads(line) for line in f]
  assert results["step"] == 6
  assert results["val/loss"] == pytest.approx([r["val/loss"] for r in logged if r["step"] == 6 and "val/loss" in r][0])


def test_a_restore_failure_of_every_step_moves_nothing_and_stops(tmp_path, straight_run, monkeypatch):
  """An optimiser of another structure fails every step alike: that is no corruption, so no step is set aside
  and the run does not start again from step 0."""
  import shutil

  import optax

  workdir = str(tmp_path / "resume")
  shutil.copytree(straight_run, workdir)
  make = loop.make_optimizer
  monkeypatch.setattr(loop, "make_optimizer", lambda train: optax.chain(make(train), optax.scale(1.0)))
  with pytest.raises(RuntimeError, match=r"none of the 6 checkpoints in .* restores, so nothing was started or moved"):
    loop.train_and_evaluate(tiny_config.get_config(), workdir)
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert not [n for n in names if n.startswith("unrestorable")] and len([n for n in names if n.isdigit()]) == 6


def test_missing_init_from_is_named_and_not_created(tmp_path):
  config = tiny_config.get_config()
  config.unlock()
  config.init_from = str(tmp_path / "no_such_run" / "checkpoints")
  with pytest.raises(FileNotFoundError, match=r"init_from=.*no_such_run.* does not exist"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "no_such_run")
  (tmp_path / "runs" / "12345").mkdir(parents=True)  # a numeric folder that is no step folder: named as given
  config.init_from = str(tmp_path / "runs" / "12345")
  with pytest.raises(FileNotFoundError, match=r"init_from=.*12345.* has no checkpoints/ folder"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


def test_checkpoint_of_another_parameter_layout_is_refused(tmp_path, straight_run, monkeypatch):
  """Shapes alone cannot tell a layout change (head-major q, k, v channels): the meta's param_layout does."""
  monkeypatch.setattr(checkpoint, "PARAM_LAYOUT", checkpoint.PARAM_LAYOUT + 1)
  config = tiny_config.get_config()
  config.unlock()
  config.init_from = os.path.join(straight_run, "checkpoints")
  with pytest.raises(ValueError, match=r"has parameter layout \d; this version reads layout"):
    loop.train_and_evaluate(config, str(tmp_path / "later"))


def test_bad_inputs_give_clear_errors(tmp_path, monkeypatch):
  config = tiny_config.get_config()
  config.unlock()
  config.data.source = "text"
  config.data.path = str(tmp_path / "missing*.txt")
  with pytest.raises(FileNotFoundError, match="matches no file"):
    loop.train_and_evaluate(config, str(tmp_path / "a"))
  shard = tmp_path / "tokens.npy"
  np.save(shard, np.array([1, 2, 300, 4] * 100, np.int32))
  config.data.source, config.data.path = "tokens", str(shard)
  with pytest.raises(ValueError, match=r"tokens.npy: token ids range over \[1, 300\], outside \[0, 264\)"):
    loop.train_and_evaluate(config, str(tmp_path / "b"))
  config.data.source = "synthetic"
  config.data.seq_len = 10**7
  with pytest.raises(ValueError, match="sequences of 10000000 need at least"):
    loop.train_and_evaluate(config, str(tmp_path / "c"))
  config.data.seq_len = 16
  config.model.overrides.widht = 3
  with pytest.raises(ValueError, match=r"unknown model override keys: \['widht'\]"):
    loop.train_and_evaluate(config, str(tmp_path / "d"))
  del config.model.overrides["widht"]
  config.mesh.shape = (8, 1, 1)
  config.data.batch_size, config.train.grad_accum = 4, 2  # trains on 8 devices, but validates 4 rows on them
  config.data.source, config.data.path = "text", str(tmp_path / "missing*.txt")  # refused before data loads
  with pytest.raises(ValueError, match=r"data.batch_size \(validation batches\) .* 4 rows per step, which the "
                     r"mesh's data × fsdp = 8 devices do not divide"):
    loop.train_and_evaluate(config, str(tmp_path / "e"))
  config.data.source, config.data.path = "synthetic", str(shard)
  assert not os.path.exists(tmp_path / "e" / "checkpoints" / "1")  # refused before step 1
  monkeypatch.setattr(jax, "process_count", lambda: 2)  # two hosts on mesh (1, 1, 8): both would hold every row
  with pytest.raises(ValueError, match=r"data × fsdp = 1 devices must be a multiple of 2"):
    loop._check_batches_fit_mesh(config, loop.mesh_lib.make_mesh((1, 1, 8)))
  monkeypatch.undo()
  with pytest.raises(ValueError, match="must be a local or mounted path"):
    loop.train_and_evaluate(config, "gs://bucket/run")
  config.train.lr = -1.0
  with pytest.raises(ValueError, match=r"train.lr=-1.0; it must be at least 0"):
    loop.train_and_evaluate(config, str(tmp_path / "f"))
  config.train.lr = 1e-2
  for name, bad, expected in (("b2", 1.0, r"in \[0, 1\)"), ("clip_norm", 0.0, "> 0"),
                              ("final_lr_fraction", 2.0, "at most 1")):
    good, config.train[name] = config.train[name], bad
    with pytest.raises(ValueError, match=rf"train.{name}={bad}; it must be {expected}"):
      loop.train_and_evaluate(config, str(tmp_path / "f"))
    config.train[name] = good
  config.model.overrides.memory_implementation = "pallas"  # atlas has Muon, which the kernels lack
  with pytest.raises(NotImplementedError, match="memory_implementation='pallas': muon=True"):
    loop.train_and_evaluate(config, str(tmp_path / "f"))
  assert not os.path.exists(tmp_path / "f")  # refused before anything was written
  del config.model.overrides["memory_implementation"]
  config.train.keep_checkpoints = 0  # Orbax would delete every checkpoint as it is written
  with pytest.raises(ValueError, match=r"train.keep_checkpoints=0; it must be at least 1"):
    loop.train_and_evaluate(config, str(tmp_path / "f"))
  config.train.keep_checkpoints, config.data.val_fraction, config.data.batch_size = 3, 0.0, 8
  np.save(shard, np.arange(400, dtype=np.int32) % 256)
  config.data.source = "tokens"  # the text sources keep a document for validation; a token split can be empty
  with pytest.raises(ValueError, match=r"the validation split has 0 tokens.* raise data.val_fraction"):
    loop.train_and_evaluate(config, str(tmp_path / "g"))


def test_main_rejects_unknown_and_mistyped_flags(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  base = [sys.executable, "-m", "experiments.main", f"--config={CONFIG_FILE}", f"--workdir={tmp_path}",
          "--distributed=false"]
  typo = subprocess.run(base + ["--config.train.stepz=3"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert typo.returncode != 0 and "Traceback" not in typo.stderr
  assert "unknown config key 'stepz' in --config.train.stepz. Did you mean \"steps\"" in typo.stderr
  wrong = subprocess.run(base + ["--config.train.steps=many"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert wrong.returncode != 0 and "steps" in wrong.stderr
  broken = tmp_path / "broken_config.py"  # a config file's own AttributeError is not blamed on a flag
  broken.write_text("import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict().nonexistent\n")
  own = subprocess.run(base[:3] + [f"--config={broken}", f"--workdir={tmp_path}", "--distributed=false",
                                   "--config.train.steps=3"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert own.returncode != 0 and "Traceback" in own.stderr and "unknown config key" not in own.stderr
