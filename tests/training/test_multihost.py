"""Two processes on 127.0.0.1 with CPU (gloo) collectives train the same model and agree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=2, process_id={pid},
                           initialization_timeout=120)
from atlas_jax.training import loop
from tests.training import tiny_config
config = tiny_config.get_config()
config.unlock()
config.train.steps = 2
config.train.eval_every = 2
results = loop.train_and_evaluate(config, {workdir!r})
print("RESULT " + json.dumps({{"process": jax.process_index(), "devices": jax.device_count(), **results}}))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree(tmp_path):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(["timeout", "400", sys.executable, "-c",
                             _CHILD.format(root=ROOT, port=port, pid=pid, workdir=str(tmp_path / "run"))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
  outputs = [p.communicate(timeout=450) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  results = [json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT "))) for out, _ in outputs]
  assert {r["process"] for r in results} == {0, 1} and all(r["devices"] == 4 for r in results)
  assert results[0]["train/loss"] == results[1]["train/loss"]
  assert results[0]["val/loss"] == results[1]["val/loss"] and results[0]["step"] == 2
