"""Test setup: fake CPU devices for sharding tests, and opt-in markers for slow and GPU-only tests."""

import os
import shutil
import tempfile

# Must happen before JAX initialises its backend (sharding tests use 8 fake CPU devices).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

# One persistent XLA compilation cache per test run, shared by the xdist workers (started after this runs, they
# inherit the environment) and by the child processes that tests start: many tests compile the same programs.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="atlas-jax-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain worker processes read absl flags; under pytest nobody parses them.
flags.FLAGS.mark_as_parsed()


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
  on_gpu = any(d.platform == "gpu" for d in jax.devices())
  for item in items:
    if "slow" in item.keywords and not config.getoption("--runslow"):
      item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
    if "gpu" in item.keywords and not on_gpu:
      item.add_marker(pytest.mark.skip(reason="needs a GPU"))


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE is not None:  # the process that made the cache (the xdist controller, or a lone pytest)
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
