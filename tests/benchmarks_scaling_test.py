"""benchmarks/scaling.py runs end to end on a one-layer model and prints its JSON."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_scaling_benchmark_prints_every_section():
  cmd = [sys.executable, str(ROOT / "benchmarks/scaling.py"), "--runs=1",
         "--rollout_generations=1,2", "--rollout_frames=2", "--frames=2", "--generations=2",
         "--config.grpo.num_generations=2", "--config.data.frames=2",
         "--config.train.batch_size=2", "--config.grpo.max_completion_length=4",
         "--config.model.arch.text.num_layers=1", "--config.model.arch.vision.num_layers=1"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout)
  assert set(r["rollout"]["by_G"]) == {"1", "2"}
  assert r["rollout"]["prompt_tokens"] == 16 + 2 * 4
  step = r["step"]["by_frames"]["2"]
  assert step == r["step"]["by_generations"]["2"]  # G = 2, T = 2 is in both sweeps
  assert step["median_s"] > 0 and step["xla_memory"]["temp_bytes"] > 0
  assert step["device_memory"] is None  # CPU keeps no allocator counters
  mfu = r["mfu"]
  assert mfu["xla_flops"] > 0 and 0 < mfu["mfu"] and mfu["whole_step"]["planner_flops"] > 0
