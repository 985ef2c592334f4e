"""The prepare CLI builds the synthetic set end to end (parallel decoding included)."""

import json
import os
import pathlib
import subprocess
import sys

import tensorflow_datasets as tfds

from data_pipelines import builder
from data_pipelines import synthetic

REPO = pathlib.Path(__file__).resolve().parents[2]


def _prepare(*args):
  return subprocess.run([sys.executable, "-m", "data_pipelines.prepare", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_builds_the_synthetic_set_end_to_end(tmp_path):
  labels_path, videos = synthetic.generate(str(tmp_path / "src"), num_videos=10, seed=3)
  (pathlib.Path(videos) / "broken.mp4").write_bytes(b"\0" * 100)
  rows = json.loads(pathlib.Path(labels_path).read_text())["annotations"]
  rows.append({"image_id": "broken.mp4", "score": "3.00"})
  pathlib.Path(labels_path).write_text(json.dumps({"annotations": rows}))
  data_dir = tmp_path / "data"
  args = ["--name", "synthetic", "--labels", labels_path, "--videos", videos,
          "--data_dir", str(data_dir), "--frames", "4", "--size", "32", "--workers", "2"]
  run = _prepare(*args)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "synthetic: 10 of 11 labelled videos written" in run.stdout
  assert "broken.mp4" in run.stdout and "undecodable" in run.stdout
  name = builder.tfds_name("synthetic", 4, 32)
  total = 0
  for split in ("train", "test"):
    src = tfds.data_source(name, split=split, data_dir=str(data_dir))
    total += len(src)
    assert src[0]["frames"].shape == (4, 32, 32, 3)
  assert total == 10
  report = json.loads((data_dir / name / builder.REPORT_NAME).read_text())
  assert report["ok"] == 10 and [s["video_id"] for s in report["skipped"]] == ["broken.mp4"]
  assert not os.path.exists(data_dir / name / "decode_cache")
  rerun = _prepare(*args)
  assert rerun.returncode == 0 and "reused" in rerun.stdout


def test_cli_fails_clearly(tmp_path):
  run = _prepare("--name", "synthetic", "--labels", str(tmp_path / "none.json"),
                 "--videos", str(tmp_path), "--data_dir", str(tmp_path / "data"))
  assert run.returncode != 0 and "prepare failed: label file not found" in run.stderr
  run = _prepare("--name", "synthetic")
  assert run.returncode != 0 and "--labels" in run.stderr
