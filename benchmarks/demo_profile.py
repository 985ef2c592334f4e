"""Where a training run's CPU, kernel time and page faults go, by phase.

  python benchmarks/demo_profile.py --config configs/demo.py --workdir DIR \
      [--config.sft.steps=200 --config.train.num_steps=100 ...] [--profile_out FILE]
      [--default_malloc]   # the run without main's allocator settings, to compare

Runs `vqathinker_jax.main` in this process (the same flags) and reads `getrusage` at the
phase boundaries: set-up (data render and build, tokenizer, model), each phase's first
step (compile and first run) and its other steps, each evaluation, and the end (export,
checkpoint wait). Writes one JSON object (to --profile_out, default DIR/phases.json) with,
per phase: wall, user and system seconds, minor/major page faults, voluntary/involuntary
context switches, and per step for the step phases. Children (the renderer's processes,
Grain workers) are counted apart, under `children`.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from absl import app, flags

_OUT = flags.DEFINE_string("profile_out", "", "the JSON report (default: <workdir>/phases.json)")
_DEFAULT_MALLOC = flags.DEFINE_bool(
    "default_malloc", False, "leave JAX's CPU dispatch and glibc malloc as they were before "
    "main._keep_freed_memory (both off), for comparison")

_FIELDS = ("ru_utime", "ru_stime", "ru_minflt", "ru_majflt", "ru_nvcsw", "ru_nivcsw")
_NAMES = ("user_s", "sys_s", "minflt", "majflt", "vol_cs", "invol_cs")


def _sample():
  s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return time.perf_counter(), [getattr(s, f) for f in _FIELDS], [getattr(c, f) for f in _FIELDS]


class Phases:
  """`enter(name)` closes the current phase (adding its usage to its totals) and opens
  `name`; `steps(name)` counts a step for a step phase."""

  def __init__(self):
    self.totals: dict[str, dict] = {}
    self.current, self.last = "startup", _sample()
    self.steps: dict[str, int] = {}
    self.prefix = "pre"  # the step phase running: sft or grpo

  def enter(self, name: str) -> str:
    now = _sample()
    t = self.totals.setdefault(self.current, dict(wall_s=0.0, **dict.fromkeys(_NAMES, 0),
                                                  children=dict.fromkeys(_NAMES, 0)))
    t["wall_s"] += now[0] - self.last[0]
    for i, n in enumerate(_NAMES):
      t[n] += now[1][i] - self.last[1][i]
      t["children"][n] += now[2][i] - self.last[2][i]
    previous, self.current, self.last = self.current, name, now
    return previous

  def report(self) -> dict:
    out = {}
    for name, t in self.totals.items():
      r = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in t.items() if k != "children"}
      if any(t["children"].values()):
        r["children"] = {k: round(v, 2) for k, v in t["children"].items()}
      if self.steps.get(name):
        n = self.steps[name]
        r["steps"] = n
        r["per_step"] = dict(wall_ms=round(1e3 * t["wall_s"] / n, 1),
                             sys_ms=round(1e3 * t["sys_s"] / n, 2),
                             minflt=round(t["minflt"] / n), vol_cs=round(t["vol_cs"] / n))
      out[name] = r
    keys = ("wall_s", *_NAMES)
    out["total"] = {k: round(sum(t[k] for t in self.totals.values()), 2) for k in keys}
    return out


def _install(phases: Phases) -> None:
  """Wraps the trainer's phase functions (the code that runs is the trainer's own)."""
  from vqathinker_jax.train import state, trainer

  setup, run_sft, run_grpo, evaluate = (trainer._setup, trainer._run_sft, trainer._run_grpo,
                                        trainer._Run.evaluate)
  call = state.Step.__call__

  def _setup(*a, **k):
    phases.enter("setup")
    try:
      return setup(*a, **k)
    finally:
      phases.enter("init_state")

  def phase_fn(fn, prefix):
    def wrapped(*a, **k):
      phases.enter(f"{prefix}_other")  # data iterator, checkpoint restore, step build
      phases.prefix = prefix
      try:
        return fn(*a, **k)
      finally:
        phases.enter("end")
    return wrapped

  def step_call(self, *a):
    if self.compiled is None:
      phases.enter(f"{phases.prefix}_first_step")
      out = call(self, *a)
      jax_block(out)
      phases.enter(f"{phases.prefix}_steps")
      return out
    name = f"{phases.prefix}_steps"
    phases.steps[name] = phases.steps.get(name, 0) + 1
    return call(self, *a)

  def evaluate_(self, graphdef, st, tag):
    previous = phases.enter(f"eval/{tag}")
    try:
      return evaluate(self, graphdef, st, tag)
    finally:
      phases.enter(previous)

  def jax_block(x):
    import jax
    jax.block_until_ready(x)

  trainer._setup = _setup
  trainer._run_sft = phase_fn(run_sft, "sft")
  trainer._run_grpo = phase_fn(run_grpo, "grpo")
  trainer._Run.evaluate = evaluate_
  state.Step.__call__ = step_call


def main(argv):
  from vqathinker_jax import main as entry
  if _DEFAULT_MALLOC.value:
    entry._sync_cpu_dispatch = entry._keep_freed_memory = lambda jax: False
  phases = Phases()
  _install(phases)
  try:
    entry.main(argv)
  finally:
    phases.enter("done")
    env = {k: v for k, v in os.environ.items() if k.startswith(("GLIBC_", "XLA_", "JAX_"))}
    report = dict(argv=sys.argv[1:], default_malloc=_DEFAULT_MALLOC.value, env=env,
                  phases=phases.report())
    out = _OUT.value or os.path.join(os.path.expanduser(flags.FLAGS.workdir), "phases.json")
    with open(out, "w") as f:
      json.dump(report, f, indent=1)
    print(json.dumps(report["phases"], indent=1))


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from vqathinker_jax import main as _entry  # noqa: F401  (defines --config and --workdir)
  app.run(main)
