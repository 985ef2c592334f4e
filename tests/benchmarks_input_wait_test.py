"""benchmarks/input_wait.py runs the trainer and reports its own input-wait figures."""

import json
import os
import pathlib
import runpy
import subprocess
import sys

from vqathinker_jax import config_check

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _overrides(*args) -> list[str]:
  """`input_wait.overrides(*args)`, read in a child process: the script defines absl flags
  (shape, workdir, ...) that would clash with other modules' in this test process."""
  code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
          f"import input_wait; print(json.dumps(input_wait.overrides(*{args!r})))")
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(p.stdout)


def _apply(config, flags_):
  """`--config.a.b=v` flags applied as main's config flags do: an existing field, its type."""
  for f in flags_:
    path, value = f.removeprefix("--config.").split("=", 1)
    *parents, name = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    old = node[name]  # KeyError: no such field
    node[name] = value == "true" if isinstance(old, bool) else type(old)(value)
  return config


def test_the_1b_set_up_is_a_valid_config_of_the_stated_shape():
  c = _apply(runpy.run_path(str(ROOT / "configs/demo.py"))["get_config"](),
             _overrides("internvl3_1b", 2, -1, -1))
  config_check.validate(c, num_devices=1, check_paths=False)
  assert (c.model.arch.text.hidden_size, c.model.arch.text.vocab_size) == (896, 151674)
  assert (c.model.arch.vision.num_layers, c.model.arch.text.num_layers) == (2, 2)
  assert (c.data.frames, c.data.size, c.train.batch_size) == (6, 448, 2)
  assert (c.grpo.num_generations, c.grpo.max_completion_length) == (4, 256)
  assert (c.sft.steps, c.train.num_steps) == (2, 3)


def test_reports_the_trainers_wait_per_phase(tmp_path):
  out = tmp_path / "wait.json"
  shrink = ["--config.data.synthetic.num_videos=16", "--config.sft.batch_size=4",
            "--config.train.batch_size=4", "--config.eval.max_videos=3",
            "--config.eval.max_new_tokens=4", "--config.grpo.max_completion_length=8"]
  cmd = [sys.executable, str(ROOT / "benchmarks/input_wait.py"), "--shape=demo",
         "--sft_steps=3", "--grpo_steps=3", f"--workdir={tmp_path}", f"--out={out}",
         *[f"--override={o}" for o in shrink]]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user's run
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r == json.loads(p.stdout) and r["cpu_model"] and r["commit"]
  for phase in ("sft", "grpo"):
    t = r["timing"][phase]
    assert t["steps"] == 3 and 0 <= t["data_wait_frac"] < 1 and t["median_step_s"] > 0

