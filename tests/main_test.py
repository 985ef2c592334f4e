"""The entry point runs the demo config end to end and rejects malformed invocations."""

import json
import pathlib
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
  import runpy
  return runpy.run_path(str(ROOT / "configs/demo.py"))["get_config"]()
