"""benchmarks/profile_update.py: a dot's FLOPs and bytes read off compiled HLO (`_hlo`) equal
the hand count, and the script profiles the tiny model's update end to end."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _hlo():
  spec = importlib.util.spec_from_file_location("_hlo", ROOT / "benchmarks/_hlo.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_hlo_index_counts_a_dots_flops_and_bytes():
  pu = _hlo()
  f = jax.jit(lambda a, b: jnp.tanh(jnp.einsum("bij,bjk->bik", a, b)))
  hlo = f.lower(jnp.ones((2, 64, 32)), jnp.ones((2, 32, 16))).compile().as_text()
  dots = [d for d in pu.hlo_index(hlo).values() if d["flops"]]
  assert dots and all(pu.op_class(d["ops"]) == "matmul" for d in dots)
  assert max(d["flops"] for d in dots) == 2 * 2 * 64 * 32 * 16
  assert max(d["bytes"] for d in dots) == 4 * 2 * (64 * 32 + 32 * 16 + 64 * 16)


def test_profile_of_the_tiny_update(tmp_path):
  out_json = tmp_path / "p.json"
  cmd = [sys.executable, str(ROOT / "benchmarks/profile_update.py"), "--shape=tiny",
         "--layers=0", "--new_tokens=8", "--frames=2", "--runs=1", f"--out={out_json}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out_json.read_text())
  p = r["profile"]
  assert p["classes"]["matmul"]["tflop"] >= 0 and p["classes"]["matmul"]["s"] > 0
  assert abs(sum(c["share"] for c in p["classes"].values()) - 1) < 0.01
  assert r["update_s"]["median_s"] > 0 and r["model_tflop"] >= 0
