"""Entry point: flags → distributed init → banner → ``train_and_evaluate(config, workdir)``.

    python -m experiments.main --config=experiments/configs/demo.py --workdir=/tmp/atlas_demo
    python -m experiments.main --config=experiments/configs/paper_760m.py:atlas --workdir=/shared/runs/atlas_760m \
        --config.train.steps=1000 --coordinator_address=host0:1234 --num_processes=8 --process_id=$RANK

Multi-host: pass --coordinator_address/--num_processes/--process_id, or nothing on a TPU pod or a SLURM/Open MPI
cluster (``jax.distributed.initialize()`` reads the environment there); --distributed=false for one process.
"""

from __future__ import annotations

import json
import platform
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and logs go")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "true", "false"],
                                 "initialise jax.distributed (auto: when a coordinator is given or detected)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
flags.mark_flags_as_required(["config", "workdir"])


def _initialise_distributed() -> None:
  """jax.distributed from the flags, or from the environment (TPU pods, SLURM, Open MPI) when none is given.

  Only "no cluster found" (ValueError) falls back to one process; a cluster that fails to connect is an error, so a
  misconfigured job never runs as N independent copies writing one workdir."""
  mode = _DISTRIBUTED.value
  if mode == "false":
    return
  given = {name: value for name, value in (("coordinator_address", _COORDINATOR.value),
                                           ("num_processes", _NUM_PROCESSES.value),
                                           ("process_id", _PROCESS_ID.value)) if value is not None}
  if mode == "auto" and not given:
    try:
      jax.distributed.initialize()
    except ValueError:
      pass  # no cluster environment: a single process
    return
  jax.distributed.initialize(**given)


def main(argv):
  del argv
  _initialise_distributed()
  from atlas_jax import __version__
  from atlas_jax.training.loop import train_and_evaluate

  if jax.process_index() == 0:
    print(f"atlas-jax {__version__} | jax {jax.__version__} | python {platform.python_version()} | "
          f"{jax.process_count()} process(es), {jax.device_count()} {jax.devices()[0].platform} device(s)",
          flush=True)
  logging.set_verbosity(logging.WARNING)
  results = train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  if jax.process_index() == 0:
    print("final: " + json.dumps(results), flush=True)


def _parse_flags(argv):
  """absl's flag parsing, with an unknown ``--config.<key>`` as one line naming the flag: ml_collections raises
  an AttributeError for it, which absl would show as a long traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except AttributeError as e:
    reason = e.args[0] if e.args else e
    reason = str(reason.args[0] if isinstance(reason, Exception) and reason.args else reason)
    given = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
    key = reason.splitlines()[0].strip("'\"")
    named = [flag for flag in given if flag.endswith("." + key) or f".{key}." in flag]
    if not named:  # not an override's key (the config file's own get_config failed, say): the real traceback
      raise
    hint = " ".join(reason.splitlines()[1:])
    sys.exit(f"FATAL Flags parsing error: unknown config key {key!r} in {', '.join(named)}. {hint}".strip())


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
