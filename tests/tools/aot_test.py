"""tools/aot: the trainer's GRPO step, compiled by XLA:TPU on this CPU for a v5p topology
(libtpu, no TPU): the report, the mesh laid over the chips, and a model too big for the
chips reported as not fitting (the compiler's out-of-memory error, not a crash)."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

import one_device

ROOT = pathlib.Path(__file__).resolve().parents[2]
if importlib.util.find_spec("libtpu") is None:
  pytest.skip("libtpu is not installed (pip install -e '.[tpu]')", allow_module_level=True)


def _aot(*args):
  env = dict(one_device.env(), ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  out = subprocess.run([sys.executable, "-m", "vqathinker_jax.tools.aot",
                        "--config", str(ROOT / "configs/demo.py"), "--topology", "v5p-8",
                        "--config.mesh.fsdp=-1", *args],
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout)


def test_the_demo_step_compiles_for_v5p_8():
  r = _aot()
  assert (r["topology"], r["chips"], r["program"]) == ("v5p-8", 4, "step")
  assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert r["fits"] and 0 < r["peak_gib_per_chip"] < r["hbm_gib_per_chip"] == 95.74
  assert r["flops_per_step"] > 0 and r["compile_s"] > 0


def test_a_model_too_big_for_the_chips_does_not_fit():
  # 8 decoder layers of width 16384 and MLP 65536: ~26 G parameters, ~6.4 G per chip, x 16
  # bytes (f32 weights, Adam moments, gradients) > a v5p chip's 95.74 GiB.
  r = _aot("--program", "update", "--config.grpo.beta=0", "--config.model.arch.text.num_layers=8",
           "--config.model.arch.text.hidden_size=16384",
           "--config.model.arch.text.intermediate_size=65536")
  assert r["program"] == "update" and r["fits"] is False
  assert "memory" in r.get("error", "").lower() or r.get("peak_gib_per_chip", 0) > 95.74
