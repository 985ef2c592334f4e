"""`--workdir gs://bucket/run`: every output of training, `mode=eval` and `mode=predict`
lands in the bucket (none in a local `gs:` folder), and a rerun resumes from it. The real
entry point runs against a local stand-in for Cloud Storage (tests/fake_gcs.py: an object
store's rules, no appends), the demo config shrunk as in tests/train/trainer_test.py."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import fake_gcs
import one_device

ROOT = pathlib.Path(__file__).resolve().parents[1]
GRPO = 2
TINY = [
    "--config.data.synthetic.num_videos=12", "--config.data.synthetic.num_frames=8",
    "--config.data.synthetic.test_fraction=0.4", "--config.sft.steps=0",
    "--config.train.batch_size=4", f"--config.train.num_steps={GRPO}",
    "--config.train.checkpoint_every=1", "--config.grpo.num_generations=2",
    "--config.grpo.max_completion_length=8", "--config.eval.batch_size=4",
    "--config.eval.max_videos=4", "--config.eval.max_new_tokens=8",
]


def _main(tmp, *args, workdir="gs://bucket/run"):
  """main on the stand-in bucket tmp/gcs, from an empty working directory."""
  (tmp / "cwd").mkdir(exist_ok=True)
  env = one_device.env(**{fake_gcs.ROOT_ENV: str(tmp / "gcs"), "TMPDIR": str(tmp / "local")})
  (tmp / "local").mkdir(exist_ok=True)
  out = subprocess.run([sys.executable, str(ROOT / "tests/fake_gcs.py"),
                        "--config", str(ROOT / "configs/demo.py"), "--workdir", workdir,
                        *TINY, *args], cwd=tmp / "cwd", env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def _rows(run):
  return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("gcs_run")
  return tmp, _main(tmp)


def test_training_writes_every_output_to_the_bucket(trained):
  tmp, out = trained
  run = tmp / "gcs" / "bucket" / "run"
  assert [r["step"] for r in _rows(run)] == list(range(1, GRPO + 1))
  # Orbax took it for GCS: a step is committed by a marker file, not a rename.
  assert (run / "checkpoints" / str(GRPO) / "commit_success.txt").exists()
  assert (run / "checkpoints" / str(GRPO) / "state").is_dir()
  assert list((run / "tb").glob("events.out.tfevents.*"))
  for tag in ("init", "final"):
    assert json.loads((run / "eval" / tag / "summary.json").read_text())["sets"]["synthetic"]["n"] == 4
    assert (run / "eval" / tag / "synthetic.png").stat().st_size > 0
  assert (run / "export" / "model.safetensors").exists()
  assert (run / "export" / "tokenizer.json").exists() and (run / "tokenizer" / "tokenizer.json").exists()
  summary = json.loads((run / "summary.json").read_text())
  assert summary["metrics"] == "gs://bucket/run/metrics.jsonl"
  assert "tensorboard: gs://bucket/run/tb" in out.stdout
  assert not list((tmp / "cwd").iterdir()), "something was written to the working directory"
  assert not [p for p in tmp.rglob("gs:*")], "a gs:// path became a local folder"


def test_rerun_resumes_from_the_bucket_without_repeating_rows(trained):
  tmp, _ = trained
  run = tmp / "gcs" / "bucket" / "run"
  before = (run / "export" / "model.safetensors").read_bytes()
  # A run killed before its last checkpoint committed: the rerun restores the one before
  # (state, key and data position from the bucket) and logs the last step again, once.
  shutil.rmtree(run / "checkpoints" / str(GRPO))
  out = _main(tmp)
  assert f"trained 0 SFT + {GRPO} GRPO steps" in out.stdout
  assert [r["step"] for r in _rows(run)] == list(range(1, GRPO + 1))
  assert (run / "checkpoints" / str(GRPO) / "commit_success.txt").exists()
  assert (run / "export" / "model.safetensors").read_bytes() == before
  assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 2  # one per run


def test_eval_and_predict_write_their_reports_to_the_bucket(trained):
  tmp, _ = trained
  gcs = tmp / "gcs" / "bucket"
  _main(tmp, "--config.mode=eval")
  again = json.loads((gcs / "run" / "eval" / "eval" / "synthetic.json").read_text())
  final = json.loads((gcs / "run" / "eval" / "final" / "synthetic.json").read_text())
  # The policy restored from the bucket's latest checkpoint is the final one.
  assert [v["text"] for v in again["videos"]] == [v["text"] for v in final["videos"]]
  assert (gcs / "run" / "eval" / "eval" / "synthetic_reasoning.jsonl").exists()

  videos = next((tmp / "local").rglob("synthetic_videos")) / "videos"
  model = tmp / "model"  # the export, downloaded
  shutil.copytree(gcs / "run" / "export", model)
  _main(tmp, "--config.mode=predict", f"--config.model.checkpoint={model}",
        "--config.model.tokenizer=", f"--config.predict.videos={videos}",
        "--config.predict.max_new_tokens=8", workdir="gs://bucket/predict")
  preds = json.loads((gcs / "predict" / "predictions.json").read_text())
  assert len(preds) == len(os.listdir(videos)) and all(p["error"] is None for p in preds)
  assert not [p for p in tmp.rglob("gs:*")]
