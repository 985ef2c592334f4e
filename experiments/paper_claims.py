"""A small reproduction of the paper's claims on synthetic data (an experiment, not a test).

  python experiments/paper_claims.py --out /tmp/claims [--seeds 0,1,2] [--arms ...]

The paper (docs/method.md) claims that each of its rewards helps, and that scoring learned
by RL from score-level rewards generalises out of distribution better than supervised
fine-tuning on the same labels. Here, on the demo's synthetic task (configs/demo.py: its
model, data and budgets), per seed:

  warm-start  the demo's format-only warm-start (`sft.answer=random_scene`: a random score
              per scene and video, no label information), run once and shared by the GRPO arms;
  arms        regression      GRPO, regression (+ format) reward only
              +ranking        GRPO, regression + ranking (fidelity) rewards
              +temporal       GRPO, all three (the method; temporal perturbations on)
              sft_labels      the supervised baseline: SFT on the labels from scratch for
                              the warm-start's steps + the GRPO steps (the same videos seen)
  splits      id              held-out clips of the training distribution: the 4 training
                              scenes, distortion strengths 1-2
              ood_scenes      4 scenes never seen in training (another rendering seed),
                              strengths 1-2
              ood_both        unseen scenes, and strength 3 only (never seen in training)

Each arm is `python -m vqathinker_jax.main` in its own process (workdir out/seed<s>/<arm>).
Writes out/claims.json (every run's figures, the command, date, commit, machine) and
out/claims.md (SRCC/PLCC mean ± std over seeds per arm and split), and prints the table.
The distortion-attribution column is the share of distorted in-distribution clips whose
`<think>` names their distortion (`eval.attribution`, docs/method.md §5).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.py"
ARMS = {  # config overrides per arm (on the demo's)
    "regression": {"rewards.ranking_weight": 0.0, "grpo.temporal": False},
    "+ranking": {"grpo.temporal": False},
    "+temporal": {},
    "sft_labels": None,  # see _arm_overrides
}
SPLITS = {"id": "synthetic", "ood_scenes": "synthetic_ood_scenes", "ood_both": "synthetic_ood_both"}
OOD = {  # name -> synthetic.generate settings besides the demo's (rendering seed 1: new scenes)
    "synthetic_ood_scenes": dict(seed=1, strengths=(1, 2)),
    "synthetic_ood_both": dict(seed=1, strengths=(3,)),
}
TRAIN_STRENGTHS = "1,2"


def demo_config():
  sys.path.insert(0, str(ROOT))
  import runpy
  return runpy.run_path(str(DEMO))["get_config"]()


def _flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def _common(data_dir: pathlib.Path, seed: int, cfg) -> dict:
  return {"seed": seed, "data.data_dir": data_dir, "data.synthetic.strengths": TRAIN_STRENGTHS,
          "data.synthetic.num_videos": cfg.data.synthetic.num_videos,
          "sft.steps": cfg.sft.steps, "eval.sets": ",".join(SPLITS.values()),
          "train.checkpoint_every": 100000}


def _arm_overrides(arm: str, cfg, grpo_steps: int) -> dict:
  if arm == "sft_labels":
    return {"sft.answer": "label", "sft.steps": cfg.sft.steps + grpo_steps,
            "train.num_steps": 0, "train.num_epochs": 0}
  return {"train.num_steps": grpo_steps, **ARMS[arm]}


def _main(workdir: pathlib.Path, overrides: dict, log: pathlib.Path) -> float:
  cmd = [sys.executable, "-m", "vqathinker_jax.main", f"--config={DEMO}",
         f"--workdir={workdir}", *_flags(overrides)]
  t0 = time.time()
  with open(log, "w") as f:
    p = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
  if p.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}); see {log}")
  return time.time() - t0


def build_ood(data_dir: pathlib.Path, cfg) -> None:
  """Renders and builds the out-of-distribution sets (all clips in their test split)."""
  from data_pipelines import builder, synthetic
  s = cfg.data.synthetic
  n = max(1, round(s.num_videos * s.test_fraction))
  for name, extra in OOD.items():
    root = data_dir / f"{name}_videos"
    if not (root / "labels.json").exists():
      synthetic.generate(str(root), num_videos=n, num_frames=s.num_frames, height=s.height,
                         width=s.width, scenes=s.scenes, exposure=s.exposure, workers=2,
                         distortions=[d for d in s.distortions.split(",") if d], **extra)
    builder.build(name, str(root / "labels.json"), str(root / "videos"), str(data_dir / "tfds"),
                  cfg.eval.frames, cfg.eval.size, split="test", progress=False)


def _figures(workdir: pathlib.Path, tag: str) -> dict:
  s = json.loads((workdir / "summary.json").read_text())
  out = {split: {k: s["eval"][tag][name].get(k) for k in ("srcc", "plcc")}
         for split, name in SPLITS.items()}
  out["reward_first"], out["reward_last"] = s.get("reward_first"), s.get("reward_last")
  ev = workdir / "eval" / tag / "summary.json"  # evaluate.run's own, with the attribution
  attribution = json.loads(ev.read_text()).get("attribution", {}) if ev.exists() else {}
  id_metrics = attribution.get(SPLITS["id"], {}).get("metrics", {})
  out["attribution"] = id_metrics.get("attribution_rate")
  return out


def _stat(xs) -> str:
  xs = [x for x in xs if x is not None]
  if not xs:
    return "n/a"
  return f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def table(runs: dict, seeds) -> str:
  lines = ["| arm | " + " | ".join(f"{sp} SRCC | {sp} PLCC" for sp in SPLITS)
           + " | distortion attribution |",
           "|---|" + "---|" * (2 * len(SPLITS)) + "---|"]
  for arm in ["warm-start"] + list(ARMS):
    cells = []
    for sp in SPLITS:
      for k in ("srcc", "plcc"):
        cells.append(_stat([runs[f"{s}/{arm}"][sp][k] for s in seeds if f"{s}/{arm}" in runs]))
    attribution = _stat([runs[f"{s}/{arm}"].get("attribution") for s in seeds
                         if f"{s}/{arm}" in runs])
    lines.append(f"| {arm} | " + " | ".join(cells) + f" | {attribution} |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", required=True, type=pathlib.Path)
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--arms", default=",".join(ARMS))
  ap.add_argument("--grpo_steps", type=int, default=0, help="0: the demo's")
  ap.add_argument("--sft_steps", type=int, default=0, help="warm-start steps (0: the demo's)")
  ap.add_argument("--num_videos", type=int, default=0, help="training clips (0: the demo's)")
  args = ap.parse_args()
  cfg = demo_config()
  if args.sft_steps:
    cfg.sft.steps = args.sft_steps
  if args.num_videos:
    cfg.data.synthetic.num_videos = args.num_videos
  seeds = [int(s) for s in args.seeds.split(",")]
  arms = args.arms.split(",")
  grpo_steps = args.grpo_steps or cfg.train.num_steps
  out = args.out.resolve()
  data_dir = out / "data"
  out.mkdir(parents=True, exist_ok=True)
  t_start = time.time()
  build_ood(data_dir, cfg)
  runs, seconds = {}, {}
  for seed in seeds:
    base = _common(data_dir, seed, cfg)
    warm = out / f"seed{seed}" / "warm-start"
    if not (warm / "summary.json").exists():
      warm.mkdir(parents=True, exist_ok=True)
      seconds[f"{seed}/warm-start"] = _main(
          warm, {**base, "train.num_steps": 0, "train.num_epochs": 0}, warm / "log.txt")
    runs[f"{seed}/warm-start"] = _figures(warm, "final")
    for arm in arms:
      wd = out / f"seed{seed}" / arm
      if not (wd / "summary.json").exists():
        wd.mkdir(parents=True, exist_ok=True)
        if arm != "sft_labels":  # starts from the shared warm-start checkpoint
          for d in ("checkpoints", "tokenizer"):
            shutil.copytree(warm / d, wd / d, dirs_exist_ok=True)
        seconds[f"{seed}/{arm}"] = _main(wd, {**base, **_arm_overrides(arm, cfg, grpo_steps)},
                                         wd / "log.txt")
      runs[f"{seed}/{arm}"] = _figures(wd, "final")
      print(f"seed {seed} {arm}: " + json.dumps(runs[f"{seed}/{arm}"]), flush=True)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
              if line.startswith("model name")), platform.processor())
  md = table(runs, seeds)
  report = dict(command=" ".join(sys.argv), date=datetime.date.today().isoformat(),
                commit=commit, cpu=cpu, cores=os.cpu_count(), seeds=seeds, arms=arms,
                grpo_steps=grpo_steps, sft_steps=cfg.sft.steps, runs=runs, seconds=seconds,
                total_seconds=round(time.time() - t_start, 1), table=md)
  (out / "claims.json").write_text(json.dumps(report, indent=1))
  (out / "claims.md").write_text(md + "\n")
  print(md)
  print(f"total {report['total_seconds'] / 60:.1f} min; {out / 'claims.json'}")


if __name__ == "__main__":
  main()
