"""Smoke test of benchmarks/grpo_vs_trl.py: tiny settings, one JSON object with both sides."""

import json
import pathlib
import subprocess
import sys

import pytest

import one_device

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "grpo_vs_trl.py"


def test_grpo_vs_trl_runs_and_reports():
  pytest.importorskip("trl")
  env = one_device.env()  # one device, as run by hand
  out = subprocess.run(
      [sys.executable, str(SCRIPT), "--videos=2", "--generations=2", "--new_tokens=4",
       "--frames=1", "--steps=2", "--warmup=1", "--trl_warmup=0", "--seed=1", "--low_memory",
       "--sequential", "--roofline"],
      capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout)
  assert report["batch"]["completions"] == 4 and report["batch"]["new_tokens"] == 4
  assert report["sampling"]["completion_lengths_min_max"] == {"ours": [4, 4], "trl": [4, 4]}
  for side in ("ours", "trl"):
    assert report[side]["median_s"] > 0 and len(report[side]["runs_s"]) == 2
  # TRL ran its VLM path: the frames went through the policy's and the reference's ViT.
  assert report["trl"]["vit_frames_per_step"] == {"policy": 8, "reference": 4}
  assert set(report["trl"]["phases_median_s"]) == {"rollout", "reference", "reward",
                                                   "scoring_rest", "update"}
  assert report["speedup"] > 0 and report["ours"]["compile_s"] > 0
  # --trl_warmup 0: TRL's first step is one of the timed ones (it made 2 steps in all).
  assert report["warmup_steps"] == {"ours": 1, "trl": 0}
  # --sequential: each of the 6 processes alone (ours, TRL, our rollout, our 1-token
  # rollout, matmul, copy); the limits measured in the same run; the update's
  # FLOP rate and the decode step's bandwidth from the split.
  assert "alone in turn" in report["setup"] and len(report["load_by_contender"]) == 6
  assert report["matmul_peak_gflops"]["median_gflops"] > 0
  assert 0 < report["ours"]["update"]["fraction_of_matmul_peak"]
  assert report["ours"]["decode_step"]["least_bytes_gb"] > 0
  assert report["ours"]["phases_median_s"]["rollout"] > 0
  # Like for like: each side in its own process on the same pinned core.
  assert len(report["cores"]) == 1 and report["env"]["OMP_NUM_THREADS"] == "1"
  assert report["cpu_model"] and report["command"].startswith("benchmarks/grpo_vs_trl.py")
