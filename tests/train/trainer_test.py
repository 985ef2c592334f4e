"""The training job end to end on the demo config, shrunk: outputs, the XLA trace window,
exact resumption after a SIGKILL, and the same job on the Qwen2.5-VL backbone."""

import json
import math
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest

import one_device

ROOT = pathlib.Path(__file__).resolve().parents[2]
SFT, GRPO = 3, 3
TINY = [
    "--config.data.synthetic.num_videos=16", "--config.data.synthetic.num_frames=8",
    "--config.data.synthetic.test_fraction=0.5", f"--config.sft.steps={SFT}",
    "--config.sft.batch_size=4", "--config.train.batch_size=4", f"--config.train.num_steps={GRPO}",
    "--config.train.checkpoint_every=1", "--config.grpo.num_generations=2",
    "--config.grpo.max_completion_length=20", "--config.eval.batch_size=4",
    "--config.eval.max_new_tokens=20",
]


def _env(tmp_path):
  # One device as a user's CPU machine; compilations are shared between the runs through
  # the session's compilation cache (conftest).
  return one_device.env()


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "vqathinker_jax.main", "--config", str(ROOT / "configs/demo.py"),
          "--workdir", str(workdir), *TINY, *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """An uninterrupted run (with a trace of steps [2, 4))."""
  tmp = tmp_path_factory.mktemp("train")
  out = subprocess.run(_cmd(tmp / "a", "--config.train.profile_start=2",
                            "--config.train.profile_end=4"),
                       env=_env(tmp), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return tmp, out


def test_run_writes_logs_reports_export_and_trace(finished):
  tmp, out = finished
  wd = tmp / "a"
  assert "trained 3 SFT + 3 GRPO steps" in out.stdout
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, SFT + GRPO + 1))
  assert [r["phase"] for r in rows] == ["sft"] * SFT + ["grpo"] * GRPO
  assert all(r["loss"] is not None for r in rows)
  assert {"reward/total", "reward/format", "kl", "clip_low", "entropy", "parse_fail_rate",
          "frac_reward_zero_std", "step_time_s", "tokens_per_s", "data_wait_s"} <= set(rows[-1])
  assert all(r["data_wait_s"] >= 0 for r in rows)  # the wait for each step's batch
  assert list((wd / "tb").glob("events.out.tfevents.*"))
  for tag in ("sft", "final"):
    summary = json.loads((wd / "eval" / tag / "summary.json").read_text())
    assert summary["sets"]["synthetic"]["n"] >= 3
    assert (wd / "eval" / tag / "synthetic.png").stat().st_size > 0
  summary = json.loads((wd / "summary.json").read_text())
  assert set(summary["eval"]) == {"sft", "final"} and len(summary["reward_curve"]) == GRPO
  assert summary["timing"]["grpo"]["compile_s"] > 0
  for phase in ("sft", "grpo"):  # over the steps after the first
    waits = [r["data_wait_s"] for r in rows if r["phase"] == phase][1:]
    steps = [r["step_time_s"] for r in rows if r["phase"] == phase][1:]
    assert summary["timing"][phase]["data_wait_frac"] == pytest.approx(
        sum(waits) / (sum(waits) + sum(steps)), abs=1e-4)
  assert "waiting for input" in out.stdout
  assert (wd / "export" / "model.safetensors").exists() and (wd / "export" / "tokenizer.json").exists()
  assert list((wd / "profile").glob("plugins/profile/*/*.xplane.pb")), "no XLA trace written"


def test_eval_mode_scores_the_trained_policy(finished):
  tmp, _ = finished
  wd = tmp / "a"
  out = subprocess.run(_cmd(wd, "--config.mode=eval"), env=_env(tmp), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  final = json.loads((wd / "eval" / "final" / "synthetic.json").read_text())
  again = json.loads((wd / "eval" / "eval" / "synthetic.json").read_text())
  # The latest checkpoint is the final policy: greedy decoding gives the same texts.
  assert [v["text"] for v in again["videos"]] == [v["text"] for v in final["videos"]]


def test_sigkill_then_rerun_gives_bitwise_identical_parameters(finished):
  tmp, _ = finished
  wd = tmp / "b"
  kill_after = random.Random(os.getpid()).randint(1, SFT + GRPO - 1)
  child = subprocess.Popen(_cmd(wd), env=_env(tmp), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not (wd / "checkpoints" / str(kill_after)).is_dir():
    assert child.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  child.send_signal(signal.SIGKILL)
  assert child.wait(timeout=30) == -signal.SIGKILL
  assert not (wd / "export").exists()
  out = subprocess.run(_cmd(wd), env=_env(tmp), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  a = (tmp / "a" / "export" / "model.safetensors").read_bytes()
  b = (wd / "export" / "model.safetensors").read_bytes()
  assert a == b, f"parameters differ after a kill at step {kill_after} and a rerun"


def test_sft_only_run_from_a_random_warm_start(tmp_path):
  """train.num_epochs=0 with num_steps=0: SFT only, evaluated once as the final policy; the
  demo's format-only warm-start (random scores per scene and video) trains."""
  wd = tmp_path / "sft_only"
  out = subprocess.run(_cmd(wd, "--config.train.num_steps=0", "--config.train.num_epochs=0"),
                       env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"trained {SFT} SFT + 0 GRPO steps" in out.stdout
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["phase"] for r in rows] == ["sft"] * SFT
  summary = json.loads((wd / "summary.json").read_text())
  assert set(summary["eval"]) == {"final"} and summary["reward_curve"] == []
  assert (wd / "export" / "model.safetensors").exists()


def test_qwen_backbone_trains_end_to_end(tmp_path):
  """configs/qwen25vl_demo.py, shrunk as the others: SFT and GRPO steps on a tiny
  Qwen2.5-VL with the same rollout and rewards, its evaluations, and an export that loads
  back as Qwen2.5-VL."""
  wd = tmp_path / "run"
  out = subprocess.run([sys.executable, "-m", "vqathinker_jax.main", "--config",
                        str(ROOT / "configs/qwen25vl_demo.py"), "--workdir", str(wd), *TINY],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"trained {SFT} SFT + {GRPO} GRPO steps" in out.stdout
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["phase"] for r in rows] == ["sft"] * SFT + ["grpo"] * GRPO
  assert all(math.isfinite(r["loss"]) for r in rows)
  grpo = [r for r in rows if r["phase"] == "grpo"]
  # The rollout sampled completions and the three rewards scored them.
  assert all(r["tokens"] > 0 for r in grpo)
  assert {"reward/total", "reward/format", "kl", "entropy"} <= set(grpo[-1])
  for tag in ("sft", "final"):
    summary = json.loads((wd / "eval" / tag / "summary.json").read_text())
    assert summary["sets"]["synthetic"]["n"] >= 3
  config = json.loads((wd / "export" / "config.json").read_text())
  assert config["model_type"] == "qwen2_5_vl"
  from vqathinker_jax import model
  m, cfg = model.from_pretrained(wd / "export")
  assert cfg.family == "qwen2_5_vl" and cfg.motion is None
