"""The entry point runs the demo config end to end and rejects malformed invocations."""

import json
import pathlib
import runpy
import subprocess
import sys

import pytest

import one_device

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(*args, cwd=ROOT):
  env = one_device.env()  # one device, as a user's CPU machine
  return subprocess.run([sys.executable, "-m", "vqathinker_jax.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_demo_smoke_runs_from_any_directory(tmp_path):
  out = _main("--config", str(ROOT / "configs/demo.py"), "--workdir", str(tmp_path / "wd"),
              "--config.model.dtype=bfloat16", "--config.mode=smoke", cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads((tmp_path / "wd/smoke.json").read_text())
  assert report["status"] == "ok" and report["dtype"] == "bfloat16"
  assert report["logits"] == [2, 16 + 3 * 4, 512]


def test_qwen_smoke_on_a_sharded_mesh(tmp_path):
  """The smoke check on the Qwen2.5-VL backbone (each frame an image item), its weights
  split over fsdp and tensor."""
  from vqathinker_jax import smoke
  config = runpy.run_path(str(ROOT / "configs/qwen25vl_demo.py"))["get_config"]()
  config.mesh.update(fsdp=2, tensor=2, data=2)
  report = smoke.run(config, tmp_path)
  assert report["status"] == "ok" and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert report["logits"] == [2, 16 + 3 * 4, 512]  # 3 frames of 56 px: 4 tokens each


def test_compile_cache_goes_where_the_config_says(tmp_path):
  cache = tmp_path / "xla"
  out = _main("--config", str(ROOT / "configs/demo.py"), "--workdir", str(tmp_path / "wd"),
              "--config.mode=smoke", f"--config.compile_cache_dir={cache}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert any(cache.iterdir()), "no compiled program cached"


@pytest.mark.parametrize("args, message", [
    (["--config.model.no_such_field=1"], "no_such_field"),
    (["--config.mode=dance"], "config.mode='dance'"),
])
def test_bad_invocations_name_the_culprit(tmp_path, args, message):
  out = _main("--config", "configs/demo.py", "--workdir", str(tmp_path), *args)
  assert out.returncode != 0
  assert message in out.stderr


def test_smoke_loads_a_checkpoint(hf_checkpoint, tmp_path):
  from vqathinker_jax import smoke
  config = _demo_config()
  config.model.checkpoint = str(hf_checkpoint[0])
  config.mesh.update(fsdp=2, tensor=2, data=2)
  report = smoke.run(config, tmp_path)
  assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert report["params"] == sum(p.numel() for p in hf_checkpoint[1].parameters())


def _demo_config():
  return runpy.run_path(str(ROOT / "configs/demo.py"))["get_config"]()


def _never():
  raise AssertionError("cluster detection consulted")


@pytest.mark.parametrize("mode, env, detect, expected", [
    # A single-process CPU run (this machine: JAX's detection finds no cluster).
    ("auto", {}, None, None),
    # A TPU pod slice or SLURM job that JAX detects: it fills in every argument itself.
    ("auto", {}, lambda: 4, {}),
    ("auto", {}, lambda: 1, None),  # a single-host TPU VM
    # An explicit coordinator: JAX reads no JAX_NUM_PROCESSES / JAX_PROCESS_ID, so they are passed.
    ("auto", {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
              "JAX_PROCESS_ID": "1"}, _never,
     {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}),
    ("on", {}, _never, {}),
    ("off", {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, _never, None),
])
def test_distributed_start_up_decision(mode, env, detect, expected):
  from vqathinker_jax import main
  kw = {} if detect is None else {"detect": detect}
  assert main._distributed_args(mode, env, **kw) == expected


def test_distributed_auto_asks_jax_cluster_detection(monkeypatch):
  """What `jax.distributed.initialize()` would find, by JAX's own detection: the first
  cluster present (a TPU VM's metadata needs no exported shell variables)."""
  from absl import app
  from jax._src import clusters
  from vqathinker_jax import main

  class Pod(clusters.ClusterEnv):
    @classmethod
    def is_env_present(cls):
      return True

    @classmethod
    def get_process_count(cls):
      return 8

  clusters.ClusterEnv._cluster_types.remove(Pod)  # registered by subclassing: this test's only
  monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types",
                      [Pod] + clusters.ClusterEnv._cluster_types)
  assert main._detected_process_count() == 8
  assert main._distributed_args("auto", {}) == {}

  def unreachable():
    raise ConnectionError("metadata server")
  with pytest.raises(app.UsageError, match="--distributed=on or --distributed=off"):
    main._distributed_args("auto", {}, detect=unreachable)


def test_gs_workdir_and_its_compile_cache_keep_the_scheme(monkeypatch):
  import types
  from vqathinker_jax import main
  assert str(main._workdir_path("gs://b/run")) == "gs://b/run"  # pathlib: gs:/b/run
  assert str(main._workdir_path("~/run")) == str(pathlib.Path.home() / "run")
  seen = {}
  fake_jax = types.SimpleNamespace(config=types.SimpleNamespace(update=seen.__setitem__))
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  main._compile_cache(fake_jax, "auto", main._workdir_path("gs://b/run"))
  assert seen == {"jax_compilation_cache_dir": "gs://b/run/xla_cache"}
  main._compile_cache(fake_jax, "gs://b/xla", None)
  assert seen == {"jax_compilation_cache_dir": "gs://b/xla"}


def test_cpu_runs_keep_freed_memory_and_dispatch_on_the_calling_thread():
  """The page-fault fix (main._keep_freed_memory): on the CPU backend with glibc, programs
  run on the calling thread and glibc keeps freed blocks, also for the processes started
  later; with asynchronous dispatch left on it stays off (glibc would mmap anyway)."""
  code = (
      "import os, jax; from vqathinker_jax import main\n"
      "assert not main._keep_freed_memory(jax)  # async dispatch still on\n"
      "main._sync_cpu_dispatch(jax)\n"
      "assert main._keep_freed_memory(jax)\n"
      "assert os.environ['MALLOC_MMAP_MAX_'] == '0', os.environ\n"
      "assert int(os.environ['MALLOC_TRIM_THRESHOLD_']) == main._KEEP_BYTES\n")
  env = {k: v for k, v in one_device.env().items() if not k.startswith("MALLOC_")}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
