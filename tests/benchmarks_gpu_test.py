"""benchmarks/gpu.py (what gpu.sh runs on a GPU) runs end to end: a tiny smoke run on CPU."""

import json
import pathlib
import subprocess
import sys

import one_device

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
  out = tmp_path / "gpu.json"
  cmd = [sys.executable, str(ROOT / "benchmarks/gpu.py"), "--shape=tiny", "--videos=2",
         "--generations=2", "--new_tokens=4", "--frames=1", "--text=4", "--steps=1",
         "--matmul_n=64", "--copy_mib=4", f"--out={out}"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                     env=one_device.env())
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["shape"] == "tiny" and r["batch"]["videos"] == 2
  for name in ("ours", "ours_rollout", "ours_rollout_1"):
    assert r[name]["median_s"] > 0 and len(r[name]["runs_s"]) == 1
  assert r["matmul_peak_gflops"]["median_gflops"] > 0 and r["update"]["model_tflops"] > 0
  assert set(r["load_by_contender"]) == {"ours", "ours_rollout", "ours_rollout_1",
                                         "matmul_peak", "copy_bandwidth"}
