"""benchmarks/data_throughput.py runs end to end (tiny clips) with its warm and cold runs."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_data_benchmark_writes_warm_and_cold_figures(tmp_path):
  out = tmp_path / "data.json"
  cmd = [sys.executable, str(ROOT / "benchmarks/data_throughput.py"), "--videos=3",
         "--clip_frames=12", "--clip_height=64", "--clip_width=96", "--frames=2", "--size=56",
         "--runs=2", "--records=50", "--read=8", "--batch=2", f"--workdir={tmp_path}",
         f"--out={out}"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r == json.loads(p.stdout) and r["cpu_model"] and r["command"]
  for name in ("on_the_fly", "on_the_fly_cold", "pipeline_zstd", "pipeline_zstd_cold",
               "pipeline_uncompressed", "pipeline_uncompressed_cold"):
    q1, q3 = r[name]["quartiles"]
    assert len(r[name]["runs"]) == 2 and 0 < q1 <= r[name]["videos_per_s"] <= q3, name
