"""Where the GRPO update's (or the rollout's) time goes on this machine: an XLA profile of
it, by op class.

    python benchmarks/profile_update.py --shape internvl3_1b --layers 4 --remat full \
        --out benchmarks/results/profile_update_internvl3_1b.json
    python benchmarks/profile_update.py --program rollout --shape internvl3_1b --layers 4 \
        --out benchmarks/results/profile_rollout_internvl3_1b.json

The model has the shape's real widths at ``--layers`` ViT blocks and decoder layers (every
layer is the same program, so the per-layer mix of operations is the full model's; the LM
head and the vocabulary are the real ones). One update (`steps.make_update_step`, as the
trainer's) on scored rollouts of the benchmark's lengths (every completion C tokens long)
is compiled, run once untimed, then timed ``--runs`` times and profiled once with
`jax.profiler`. Each executed operation ("thunk") is matched to its instruction in the
compiled HLO: its class (matmul: a fusion or custom call holding a dot or convolution;
copy/transpose; gather/scatter/slice; reduce; elementwise) and, for matmuls, the FLOPs of
its dots from their shapes. The JSON gives per class the summed time and, for matmuls, the
FLOP rate against a float32 matmul timed in the same process (the peak) and the bytes
its dots read and write (operands and output: a decode step's dots are bound by them),
plus the slowest operations and XLA's memory account of the compiled program. With
``--program rollout``: `rollout.generate` (prefill + C decode steps, no early stop), with a
STREAM-style copy's bandwidth measured in the same process.

Legend: B videos, G completions per video, C new tokens, T frames, P prompt tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests"), str(_ROOT / "benchmarks")]
import _hlo  # noqa: E402
import _timing  # noqa: E402

from absl import app, flags  # noqa: E402

_SHAPE = flags.DEFINE_enum("shape", "internvl3_1b", ["tiny", "internvl3_1b"], "model widths")
_LAYERS = flags.DEFINE_integer("layers", 4, "ViT blocks and decoder layers (0: the shape's)")
_VIDEOS = flags.DEFINE_integer("videos", 2, "B")
_GENERATIONS = flags.DEFINE_integer("generations", 4, "G")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 256, "C (every completion this long)")
_FRAMES = flags.DEFINE_integer("frames", 6, "T")
_PROGRAM = flags.DEFINE_enum("program", "update", ["update", "rollout"], "what to profile")
_REMAT = flags.DEFINE_enum("remat", "full", ["off", "full", "save_dots"], "what each layer keeps")
_RUNS = flags.DEFINE_integer("runs", 2, "timed updates (besides the profiled one)")
_TOP = flags.DEFINE_integer("top", 15, "slowest operations listed")
_PROFILE = flags.DEFINE_bool("profile", True, "profile one more call (--noprofile: only time "
                             "the program, e.g. at full depth, where a call takes minutes)")
_OUT = flags.DEFINE_string("out", "", "JSON path (default: stdout only)")

_SKIP_EVENT = re.compile(r"^(end: |ThreadpoolListener|SlinkyThreadPool|MutexLock)")


def profile_events(trace_dir: str) -> list[tuple[str, float]]:
  """(name, seconds) of every operation XLA:CPU executed while tracing."""
  from jax.profiler import ProfileData
  path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
  events = []
  for plane in ProfileData.from_file(path).planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:  # the thunks run on the caller's thread (sync dispatch) or XLA's
      events += [(e.name, e.duration_ns / 1e9) for e in line.events
                 if not _SKIP_EVENT.match(e.name)]
  return events


def breakdown(events, index: dict, wall_s: float, peak_flops: float, top: int) -> dict:
  by_class = collections.defaultdict(lambda: {"s": 0.0, "count": 0, "flops": 0.0, "bytes": 0.0})
  by_name = collections.defaultdict(lambda: {"s": 0.0, "count": 0})
  for name, s in events:
    d = index.get(name)
    if d is None:  # the runtime's and Python's own events
      continue
    cls = _hlo.op_class(d["ops"])
    if cls == "control":
      continue
    c = by_class[cls]
    c["s"] += s
    c["count"] += 1
    c["flops"] += d["flops"]
    c["bytes"] += d["bytes"]
    by_name[name]["s"] += s
    by_name[name]["count"] += 1
  total = sum(c["s"] for c in by_class.values())
  classes = {}
  for cls, c in sorted(by_class.items(), key=lambda kv: -kv[1]["s"]):
    row = {"s": round(c["s"], 3), "share": round(c["s"] / total, 3), "count": c["count"]}
    if c["flops"]:
      row["tflop"] = round(c["flops"] / 1e12, 3)
      row["gflops_per_s"] = round(c["flops"] / c["s"] / 1e9, 1)
      row["fraction_of_matmul_peak"] = round(c["flops"] / c["s"] / peak_flops, 3)
      row["gb"] = round(c["bytes"] / 1e9, 3)
      row["gb_per_s"] = round(c["bytes"] / c["s"] / 1e9, 2)
    classes[cls] = row
  slowest = []
  for name, c in sorted(by_name.items(), key=lambda kv: -kv[1]["s"])[:top]:
    d = index[name]
    row = {"name": name, "class": _hlo.op_class(d["ops"]), "s": round(c["s"], 3),
           "count": c["count"], "ops": sorted(d["ops"])[:8]}
    if d["flops"]:
      row["gflops_per_s"] = round(d["flops"] * c["count"] / c["s"] / 1e9, 1)
    slowest.append(row)
  return {"wall_s": round(wall_s, 3), "ops_s": round(total, 3),
          "classes": classes, "slowest": slowest}


def _reduced(shape, layers: int):
  if not layers:
    return shape
  return dataclasses.replace(shape, name=f"{shape.name}_{layers}layers",
                             vision=dict(shape.vision, num_hidden_layers=layers),
                             text=dict(shape.text, num_hidden_layers=layers))


def _build(ckpt, shape, B, G, C, T, remat):
  import jax.numpy as jnp
  import numpy as np
  from grpo_ours import grpo_setup
  from shapes import prompt_batch
  from vqathinker_jax import model
  from vqathinker_jax.train import steps
  policy, _ = model.from_pretrained(ckpt, dtype="float32", param_dtype="float32",
                                    scan_layers=True)
  cfg, tx, graphdef, state = grpo_setup(policy, G, C, beta=0.0, loss_type="dr_grpo", top_k=0,
                                        remat=remat, learning_rate=1e-6)
  del policy
  ids, pix = prompt_batch(shape, B, T, 8)
  rng = np.random.default_rng(0)
  batch = dict(prompt_ids=jnp.asarray(ids), prompt_mask=jnp.ones(ids.shape, jnp.int32),
               pixel_values=jnp.asarray(pix),
               completions=jnp.asarray(rng.integers(0, 151643, (B, G, C)), jnp.int32),
               completion_mask=jnp.ones((B, G, C), jnp.int32),
               advantages=jnp.asarray(rng.standard_normal((B, G)), jnp.float32))
  return steps.make_update_step(graphdef, state, tx, cfg), state, batch, ids.shape[1]


def _rollout(ckpt, shape, B, G, C, T):
  """The rollout alone (`rollout.generate`, prefill + C decode steps; no early stop)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from shapes import prompt_batch
  from vqathinker_jax import model
  from vqathinker_jax.rl import rollout
  policy, _ = model.from_pretrained(ckpt, dtype="float32", param_dtype="float32")
  graphdef, params = nnx.split(policy)
  ids, pix = prompt_batch(shape, B, T, 8)
  args = (params, jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32), jnp.asarray(pix),
          jax.random.key(0))

  def fn(params, ids, mask, pix, rng):
    return rollout.generate(nnx.merge(graphdef, params), ids, mask, pix, rng=rng,
                            num_generations=G, max_new_tokens=C, temperature=1.0, top_k=0,
                            top_p=1.0, stop_ids=(), train=False)["tokens_NC"]
  return jax.jit(fn), args, ids.shape[1]


def _median_s(call, runs: int = 5) -> float:
  """Median seconds of ``runs`` calls of a `_timing` roofline call, after one untimed."""
  call(0)
  ts = []
  for i in range(runs):
    start = time.perf_counter()
    call(i + 1)
    ts.append(time.perf_counter() - start)
  return statistics.median(ts)


def main(argv):
  del argv
  _timing.apply_xla_flags()
  import jax
  from shapes import SHAPES, decode_bytes, make_checkpoint, update_flops
  from grpo_ours import as_in_training
  as_in_training(jax)
  full = SHAPES[_SHAPE.value]
  shape = _reduced(full, _LAYERS.value)
  B, G, C, T = _VIDEOS.value, _GENERATIONS.value, _NEW_TOKENS.value, _FRAMES.value
  program = _PROGRAM.value
  report = {"benchmark": f"profile_{program}", **_timing.provenance(), "shape": shape.name,
            "work": {"videos": B, "generations": G, "new_tokens": C, "frames": T,
                     "layers": _LAYERS.value or "all", "dtype": "float32",
                     **({"remat": _REMAT.value, "beta": 0.0} if program == "update" else {})}}
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = make_checkpoint(shape, pathlib.Path(tmp) / "ckpt")
    if program == "update":
      step, state, batch, P = _build(ckpt, shape, B, G, C, T, _REMAT.value)
      fn, args = step, (state, batch)
    else:
      fn, args, P = _rollout(ckpt, shape, B, G, C, T)
  mesh = jax.tree.leaves(args[0])[0].sharding.mesh
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    report["compile_s"] = round(time.perf_counter() - start, 2)
    hlo = compiled.as_text()
    mem = compiled.memory_analysis()
    report["memory_gb"] = {"temporaries": round(mem.temp_size_in_bytes / 1e9, 2),
                           "arguments": round(mem.argument_size_in_bytes / 1e9, 2)}
    holder = {"args": args}

    def run():
      out = compiled(*holder["args"])
      if program == "update":  # the state is donated: the next call takes the new one
        holder["args"] = (out[0], holder["args"][1])
      jax.block_until_ready(out)

    def timed():
      start = time.perf_counter()
      run()
      return time.perf_counter() - start

    report["first_call_s"] = round(timed(), 2)
    times = [timed() for _ in range(_RUNS.value)]
    if _PROFILE.value:
      trace = tempfile.mkdtemp(prefix=f"profile_{program}_")
      jax.profiler.start_trace(trace)
      wall = timed()
      jax.profiler.stop_trace()
  report[f"{program}_s"] = _timing.summary(times, 3) if times else None
  # The limits in the same process, after the program (the same threads, warm).
  peak = 2 * 4096 ** 3 / _median_s(_timing.matmul_call(4096))
  report["matmul_peak_gflops"] = round(peak / 1e9, 1)
  report["prompt_tokens"] = P
  if _PROFILE.value:
    report["profile"] = breakdown(profile_events(trace), _hlo.hlo_index(hlo), wall, peak,
                                  _TOP.value)
  if program == "update":
    flops = update_flops(shape, B, G, P, C, T, 0.0)
    report["model_tflop"] = round(flops / 1e12, 3)
    # Model FLOPs per second of the calls timed (the first, when it is the only one).
    best = statistics.median(times) if times else report["first_call_s"]
    report["model_gflops_per_s"] = round(flops / best / 1e9, 1)
    report["fraction_of_matmul_peak"] = round(flops / best / peak, 3)
    if _PROFILE.value:
      dots = report["profile"]["classes"].get("matmul", {})
      report["profile"]["executed_matmul_tflop_over_model"] = (
          round(dots.get("tflop", 0) / (flops / 1e12), 3) if flops else None)
  else:
    copy = _timing.copy_call(1024, threads=len(os.sched_getaffinity(0)))
    report["copy_bandwidth_gbs"] = round(2 * 1024 * 2 ** 20 / _median_s(copy) / 1e9, 2)
    report["decode_least_bytes_gb"] = round(decode_bytes(shape, 4, B, G, P, C) / 1e9, 4)
  _timing.emit(report, _OUT.value)


if __name__ == "__main__":
  app.run(main)
