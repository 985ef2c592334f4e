"""benchmarks/rollout.py runs end to end (two calls each, tiny) and writes its JSON."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_rollout_benchmark_writes_like_for_like_json(tmp_path):
  out = tmp_path / "rollout.json"
  cmd = [sys.executable, str(ROOT / "benchmarks/rollout.py"), "--runs=2", "--burst=1",
         "--videos=2", "--generations=2", "--new_tokens=4", "--frames=1", "--text=4",
         f"--out={out}"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r == json.loads(p.stdout)
  assert r["cores"] and len(r["cores"]) == 1 and r["env"]["OMP_NUM_THREADS"] == "1"
  assert r["cpu_model"] and r["command"].startswith("benchmarks/rollout.py")
  for name in ("ours_sample", "hf_sample", "ours_greedy", "hf_greedy"):
    assert len(r[name]["runs_s"]) == 2 and r[name]["median_s"] > 0
  assert r["speedup_sample"] > 0 and len(r["speedup_greedy_quartiles"]) == 2


def test_rollout_benchmark_splits_the_decode_step_against_measured_limits(tmp_path):
  out = tmp_path / "rollout.json"
  cmd = [sys.executable, str(ROOT / "benchmarks/rollout.py"), "--runs=2", "--burst=1",
         "--videos=2", "--generations=2", "--new_tokens=4", "--frames=1", "--text=4",
         "--modes=sample", "--peer_warmup=0", "--split", "--roofline", f"--out={out}"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(out.read_text())
  assert "ours_greedy" not in r and r["warmup"]["hf_sample"] == 0
  assert len(r["hf_sample"]["runs_s"]) == 2  # its first call timed, one more after it
  assert r["matmul_peak_gflops"]["median_gflops"] > 0
  assert r["copy_bandwidth_gbs"]["median_gbs"] > 0
  d = r["ours_decode_step"]
  assert d["least_bytes_gb"] > 0 and d["mode"] == "sample"
