"""MetricWriter on a resumed run: each step's row once, whatever an earlier run left."""

import json

from vqathinker_jax.train import log


def _steps(path):
  return [json.loads(l)["step"] for l in path.read_text().splitlines()]


def test_resume_drops_rows_past_the_checkpoint_and_a_torn_line(tmp_path):
  w = log.MetricWriter(tmp_path, 5, enabled=True, progress=False)
  for s in range(1, 5):
    w.write(s, {"loss": float(s)}, "grpo")
  w.close()
  with (tmp_path / "metrics.jsonl").open("a") as f:
    f.write('{"step": 5, "pha')  # killed mid-append
  # Resumed from the checkpoint of step 2: steps 3.. are run and logged again.
  w = log.MetricWriter(tmp_path, 5, enabled=True, progress=False, resume_step=2)
  assert [r["step"] for r in w.rows] == [1, 2]
  assert _steps(tmp_path / "metrics.jsonl") == [1, 2]
  w.write(3, {"loss": float("nan")}, "grpo")
  w.close()
  assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3]
  assert log.read_rows(tmp_path / "metrics.jsonl")[-1]["loss"] is None  # strict JSON


def test_a_fresh_start_drops_an_earlier_runs_rows(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "phase": "sft", "loss": 1.0}\n')
  w = log.MetricWriter(tmp_path, 3, enabled=True, progress=False)
  w.write(1, {"loss": 2.0}, "sft")
  w.close()
  assert log.read_rows(tmp_path / "metrics.jsonl") == [{"step": 1, "phase": "sft", "loss": 2.0}]


def test_summary_names_constant_predictions_and_the_reward_spread():
  summary = dict(
      sft_steps=4, grpo_steps=8,
      eval={"sft": {"synthetic": dict(srcc=None, plcc=None, n=10, n_distinct_pred=1)},
            "final": {"synthetic": dict(srcc=0.61, plcc=0.7, n=10, n_distinct_pred=7)}},
      reward_curve=[1.0, 1.2, 1.1, 1.5, 1.6, 2.0, 2.1, 1.9], reward_first=1.1,
      reward_first_std=0.1, reward_last=2.0, reward_last_std=0.08)
  text = log.render_summary(summary)
  lines = text.splitlines()
  assert "SRCC n/a" in lines[1] and "(one score for all 10 videos)" in lines[1]
  assert "SRCC 0.610" in lines[2] and "one score" not in lines[2]
  assert "first quarter 1.100 ± 0.100 -> last quarter 2.000 ± 0.080" in text
