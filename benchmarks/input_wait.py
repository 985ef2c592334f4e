"""How long the trainer waits on its input pipeline: the share of step time, from its own log.

  python benchmarks/input_wait.py [--shape demo|internvl3_1b] [--layers 2]
      [--grpo_steps 3 --sft_steps 2] [--override=--config.a.b=v ...] [--workdir DIR]
      [--out FILE.json]

Runs `python -m vqathinker_jax.main` (the production trainer, with its CPU runtime settings)
in a child process and reports the trainer's own timing (`summary.json`'s `timing`: per
phase the median step, the median wait for the next batch and `data_wait_frac` = total
wait / (wait + step time), the first step left out). The wait is what the step loop spends
in `next()` on the prefetched device batch (`train/prefetch.py`).

- `demo`: `configs/demo.py` as it ships (its SFT and GRPO step counts unless given).
- `internvl3_1b`: the data side of the 1B set-up on the demo's synthetic clips: 2 videos
  of 6 frames at 448 px a step (rendered at 360 x 640, the records the real ones' size),
  G 4, 256 new tokens, InternVL3-1B's widths and vocabulary with `--layers` ViT blocks and
  decoder layers (random init, remat, scanned layers; as `grpo_vs_trl.py`'s run, β 0 and
  no perturbed rollouts). Fewer layers make the step shorter
  and the input no slower, so the wait's share is an upper bound on the full model's.
Prints one JSON object with the provenance (date, CPU model, commit, command).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _timing  # noqa: E402  (benchmarks/, beside this file)

ROOT = pathlib.Path(__file__).resolve().parent.parent

_SHAPE = flags.DEFINE_enum("shape", "demo", ["demo", "internvl3_1b"], "the set-up")
_LAYERS = flags.DEFINE_integer("layers", 2, "internvl3_1b: ViT blocks and decoder layers")
_SFT = flags.DEFINE_integer("sft_steps", -1, "SFT steps (-1: demo's own; 1B: 2)")
_GRPO = flags.DEFINE_integer("grpo_steps", -1, "GRPO steps (-1: demo's own; 1B: 3)")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "further --config.* flags (after the set-up's)")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/vqathinker_input_wait", "the run's workdir")
_OUT = flags.DEFINE_string("out", "", "also write the JSON here")


def overrides(shape: str, layers: int, sft_steps: int, grpo_steps: int) -> list[str]:
  """The `--config.*` flags of the set-up on top of configs/demo.py."""
  flags_ = []
  if shape == "internvl3_1b":
    L = layers
    flags_ += [
        "--config.model.tokenizer=demo", "--config.model.scan_layers=true",
        "--config.model.arch.image_token_id=5",
        # InternViT-300M at 448 px, Qwen2.5-0.5B with its untied head (configs/internvl3_1b_lsvq.py)
        f"--config.model.arch.vision.num_layers={L}", "--config.model.arch.vision.hidden_size=1024",
        "--config.model.arch.vision.num_heads=16", "--config.model.arch.vision.intermediate_size=4096",
        "--config.model.arch.vision.image_size=448",
        f"--config.model.arch.text.num_layers={L}", "--config.model.arch.text.vocab_size=151674",
        "--config.model.arch.text.hidden_size=896", "--config.model.arch.text.num_heads=14",
        "--config.model.arch.text.num_kv_heads=2", "--config.model.arch.text.head_dim=64",
        "--config.model.arch.text.intermediate_size=4864",
        "--config.model.arch.text.rope_theta=1000000.0",
        "--config.data.frames=6", "--config.data.size=448",
        "--config.data.synthetic.num_videos=24", "--config.data.synthetic.height=360",
        "--config.data.synthetic.width=640",
        "--config.sft.batch_size=2", "--config.train.batch_size=2",
        "--config.grpo.num_generations=4", "--config.grpo.max_completion_length=256",
        "--config.grpo.remat=full", "--config.train.checkpoint_every=1000",
        # As grpo_vs_trl.py's 1B run: no perturbed rollouts, no reference model (with them
        # the one-program step needs more than 24 GB); the pipeline still draws the
        # perturbations, so the input side is unchanged.
        "--config.grpo.temporal=false", "--config.grpo.beta=0.0",
        # The evaluation is not what is measured: three clips (the fewest it takes), a few tokens.
        "--config.eval.frames=6", "--config.eval.size=448", "--config.eval.max_videos=3",
        "--config.eval.batch_size=2", "--config.eval.max_new_tokens=8",
        "--config.train.optimizer.schedule=constant",
    ]
    sft_steps = 2 if sft_steps < 0 else sft_steps
    grpo_steps = 3 if grpo_steps < 0 else grpo_steps
  if sft_steps >= 0:
    flags_.append(f"--config.sft.steps={sft_steps}")
  if grpo_steps >= 0:
    flags_.append(f"--config.train.num_steps={grpo_steps}")
  return flags_


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value) / _SHAPE.value
  cmd = [sys.executable, "-m", "vqathinker_jax.main", "--config", str(ROOT / "configs/demo.py"),
         "--workdir", str(workdir),
         *overrides(_SHAPE.value, _LAYERS.value, _SFT.value, _GRPO.value), *_OVERRIDE.value]
  report = {"benchmark": "input_wait", **_timing.provenance(), "shape": _SHAPE.value,
            "layers": _LAYERS.value if _SHAPE.value != "demo" else None, "argv": cmd[3:]}
  if (workdir / "checkpoints").exists():  # a finished run would be resumed, not timed
    raise SystemExit(f"{workdir} holds an earlier run: remove it or give another --workdir")
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"the trainer failed (exit {proc.returncode})")
  summary = json.loads((workdir / "summary.json").read_text())
  report.update(wall_s=round(time.perf_counter() - start, 1), timing=summary["timing"],
                load_average_after=[round(x, 2) for x in os.getloadavg()])
  _timing.emit(report, _OUT.value)


if __name__ == "__main__":
  app.run(main)
