"""Session set-up and shared fixtures (see tests/README.md).

Set before jax is imported, appended to any XLA_FLAGS given:
- eight fake CPU devices, so sharding tests run beside the rest (single-device tests pin
  a one-device mesh);
- LLVM's optimisations off (`--xla_backend_optimization_level=0`) unless a level is
  given: the tiny test programs spend far longer compiling than running, and this takes
  a third off the suite. It is one more float ordering, no other semantics; the
  float-ordering runs include XLA's default level (`.ci/float_orderings`).

Compiled programs are shared by every test of a run, in both pytest-xdist workers and in
the subprocesses tests start: JAX's persistent compilation cache in one folder per run.

`VQA_TEST_THREADS=1` pins each worker to one core (one intra-op thread for XLA and torch):
another summation order, for the float-ordering runs.
"""

import os
import shutil
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("VQA_TEST_THREADS") == "1":
  _worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:])
  _cores = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {_cores[_worker % len(_cores)]})  # XLA sizes its pool from this
  os.environ["OMP_NUM_THREADS"] = "1"

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # Made by the first process (pytest-xdist's controller, before it starts the workers,
  # which inherit it) and removed by that process at the end.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vqathinker-jax-cache-")
  os.environ["VQA_TEST_CACHE_OWNER"] = str(os.getpid())
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # noqa: E402

from hf_tiny import make_hf_checkpoint  # noqa: E402

if os.environ.get("VQA_TEST_THREADS") == "1":
  import torch  # noqa: E402
  torch.set_num_threads(1)


def pytest_sessionfinish(session):
  if os.environ.get("VQA_TEST_CACHE_OWNER") == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
  """(path, torch model) of a tiny random transformers InternVL, untied LM head."""
  path = tmp_path_factory.mktemp("hf_tiny")
  return path, make_hf_checkpoint(path)
