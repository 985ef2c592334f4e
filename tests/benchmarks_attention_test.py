"""benchmarks/attention.py runs end to end (tiny shape); its contenders agree."""

import json
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_attention_benchmark_reports_each_contender_with_equal_gradients(tmp_path):
  out = tmp_path / "attention.json"
  cmd = [sys.executable, str(ROOT / "benchmarks/attention.py"), "--frames=2", "--tokens=17",
         "--heads=2", "--head_dim=8", "--runs=2", "--remat", f"--out={out}"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r == json.loads(p.stdout) and r["cpu_model"] and r["command"] and r["remat"]
  for name in ("ours", "jax_dpa", "grouped_softmax"):
    assert len(r[name]["runs_s"]) == 2 and r[name]["median_s"] > 0 and r[name]["temp_gb"] >= 0
    # The same gradients (q, k, v) as JAX's own attention: the property timed is the same work.
    np.testing.assert_allclose(r[name]["grad_abs_sum"], r["jax_dpa"]["grad_abs_sum"], rtol=1e-4)
  assert r["speedup_vs_jax_dpa"] > 0 and r["matmul_peak_gflops"] > 0
