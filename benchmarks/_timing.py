"""Timing scaffolding shared by the benchmark scripts: the `--xla_flags` flag, contenders
each in its own pinned process called in a random order (`isolated`; `interleaved` keeps
them in one process), medians, the machine's description and its measured matmul peak (the
denominator of MFU)."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import time
import traceback
from typing import Any, Callable

from absl import flags

_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "appended to XLA_FLAGS before JAX starts")


def apply_xla_flags() -> None:
  """Appends ``--xla_flags`` to XLA_FLAGS: call in `main`, before anything imports JAX."""
  if _XLA_FLAGS.value:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_FLAGS.value}".strip()


def xla_flags_value() -> str:
  """The ``--xla_flags`` flag's value (for contenders' environments)."""
  return _XLA_FLAGS.value


def interleaved(contenders: dict[str, Callable[[int], object]], runs: int, burst: int = 1):
  """Calls each contender once untimed (compile / warm-up), then ``runs`` times, interleaved
  so that a change of load hits every contender alike, in an order rotated each round: a
  call right after another program's (a peer's, with its own threads and memory) runs
  measurably slower (~10 % for the rollout after transformers), so no contender always
  takes that place. ``burst`` > 1 runs each contender that many times in a row per round
  (every call timed), for figures of a steady stream of calls rather than of calls that
  each follow another program. ``fn(i)`` gets the run index (a seed); it must block until
  its work is done. Returns (first_s, times_s) by name."""
  first_s, times = {}, {name: [] for name in contenders}
  for name, fn in contenders.items():
    start = time.perf_counter()
    fn(0)
    first_s[name] = time.perf_counter() - start
  names = list(contenders)
  for r in range(-(-runs // burst)):
    for name in names[r % len(names):] + names[:r % len(names)]:
      for i in range(r * burst, min(runs, (r + 1) * burst)):
        start = time.perf_counter()
        contenders[name](i + 1)
        times[name].append(time.perf_counter() - start)
  return first_s, times


def _worker(factory, kwargs: dict, conn, cores, env: dict, warmup: int) -> None:
  """One contender's process: pins itself to ``cores``, sets ``env`` (thread counts, XLA
  flags) before anything imports torch or JAX, builds ``call = factory(**kwargs)``, calls it
  ``warmup`` times untimed (the first call's time and result reported), then times one call
  per ("run", i) message; at ("stop",) sends ``call.report()`` if the call has one."""
  try:
    if cores:
      os.sched_setaffinity(0, cores)
    os.environ.update(env)
    call = factory(**kwargs)
    start = time.perf_counter()
    info = call(0)
    first_s = time.perf_counter() - start
    for i in range(1, warmup):
      call(i)
    conn.send(("ready", first_s, info))
    while (msg := conn.recv())[0] == "run":
      start = time.perf_counter()
      call(msg[1])
      conn.send(("done", time.perf_counter() - start, None))
    report = getattr(call, "report", None)
    conn.send(("report", report() if report else None, None))
  except BaseException:  # the driver raises it, naming the contender
    conn.send(("error", traceback.format_exc(), None))
  finally:
    conn.close()


def isolated(contenders: dict[str, tuple[Callable, dict]], runs: int | dict[str, int], *,
             cores=None,
             env: dict | None = None, seed: int = 0, burst: int = 1,
             warmup: int | dict[str, int] = 1, sequential: bool = False) -> dict[str, Any]:
  """Times each contender in its own process, all pinned to the same ``cores`` (default:
  every core this process may use) with the same ``env``.

  ``contenders``: name -> (factory, kwargs); ``factory`` is a module-level function (a
  spawned process imports it) returning ``call(i)``, which must block until its work is
  done; its return value on the first call is reported as `info` (keep it small), and so
  is ``call.report()`` at the end, if it has one (`reports`). ``warmup`` untimed calls
  come first (the first one compiles); timed calls get indices from ``warmup`` on.
  Processes start one after another, each ready (built, warmed up) before the next
  starts, so no set-up or compile overlaps another's. Then ``runs`` timed calls each, in
  rounds whose order is a fresh random permutation (``seed``), ``burst`` calls of a
  contender in a row: every contender follows every other about equally often (the count
  is returned), and only one process runs at a time (the others wait on a pipe).

  ``warmup`` and ``runs`` may differ by contender (dicts, name -> count). ``warmup`` 0, for
  a contender that compiles nothing and whose calls take minutes: its first call is timed
  too, as the first of its ``runs`` (the others get indices from 1). Either way the first
  call's time is also reported apart as `first_s`.

  ``sequential``: for contenders too big to share the memory (real-shape training), each
  process lives alone: in a random order, one starts, warms up, makes its ``runs`` calls
  and exits before the next starts (no interleaving; `predecessors` then counts the
  process that ran before, and `load_by_contender` the load average at each one's end).

  Returns {"first_s", "times_s", "info", "reports" (by name), "predecessors" (name ->
  {previous contender: count}), "load_average" (before, after), "cores", "env", "seed",
  "burst", "warmup", "sequential"}.
  """
  ctx = multiprocessing.get_context("spawn")
  cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
  env = dict(env or {})
  warm = {name: warmup.get(name, 1) if isinstance(warmup, dict) else warmup
          for name in contenders}
  runs_of = {name: runs[name] if isinstance(runs, dict) else runs for name in contenders}
  for name in contenders:
    if warm[name] < 0 or (warm[name] == 0 and runs_of[name] < 1):
      raise ValueError(f"contender {name!r}: warmup {warm[name]} with {runs_of[name]} runs "
                       "(warmup 0 counts the first call as a run)")
  # Every worker makes its first call on starting; with warmup 0 that call is the first
  # run, so one run fewer follows, indices from 1.
  after = {name: runs_of[name] - (warm[name] == 0) for name in contenders}
  first_index = {name: max(1, warm[name]) for name in contenders}
  procs, conns, first_s, info = {}, {}, {}, {}
  load_before = [round(x, 2) for x in os.getloadavg()]
  rng = random.Random(seed)
  names, times = list(contenders), {name: [] for name in contenders}
  predecessors = {name: {} for name in contenders}
  reports, load_by = {}, {}

  def receive(name):
    kind, value, extra = conns[name].recv()
    if kind == "error":
      raise RuntimeError(f"benchmark contender {name!r} failed:\n{value}")
    return value, extra

  def start(name):
    factory, kwargs = contenders[name]
    conns[name], child = ctx.Pipe()
    procs[name] = ctx.Process(target=_worker,
                              args=(factory, kwargs, child, cores, env, first_index[name]),
                              daemon=True)
    procs[name].start()
    child.close()
    first_s[name], info[name] = receive(name)
    if warm[name] == 0:
      times[name].append(first_s[name])

  def stop(name):
    conns[name].send(("stop", None))
    reports[name] = receive(name)[0]

  try:
    if sequential:
      previous = None
      for name in rng.sample(names, len(names)):
        start(name)
        if previous is not None:
          predecessors[name][previous] = 1
        for j in range(after[name]):
          conns[name].send(("run", first_index[name] + j))
          times[name].append(receive(name)[0])
        stop(name)
        procs[name].join(timeout=60)
        load_by[name] = [round(x, 2) for x in os.getloadavg()]
        previous = name
    else:
      for name in names:
        start(name)
      previous, i = None, 0
      while i < max(after.values()):
        order = rng.sample(names, len(names))
        for name in order:
          for j in range(i, min(after[name], i + burst)):
            if previous is not None:
              predecessors[name][previous] = predecessors[name].get(previous, 0) + 1
            conns[name].send(("run", first_index[name] + j))
            times[name].append(receive(name)[0])
            previous = name
        i += burst
      for name in names:
        stop(name)
  finally:
    for name, proc in procs.items():
      try:
        conns[name].send(("stop", None))
      except (BrokenPipeError, OSError):
        pass
      proc.join(timeout=30)
      if proc.is_alive():
        proc.kill()
  return {"first_s": first_s, "times_s": times, "info": info, "reports": reports,
          "predecessors": predecessors, "warmup": warm, "sequential": sequential,
          **({"load_by_contender": load_by} if sequential else {}),
          "load_average": {"before": load_before,
                           "after": [round(x, 2) for x in os.getloadavg()]},
          "cores": cores, "env": env, "seed": seed, "burst": burst}


def emit(report: dict, out: str = "") -> None:
  """Prints a benchmark's JSON report and, with ``out``, writes it there too."""
  import json
  text = json.dumps(report, indent=2)
  if out:
    with open(out, "w") as f:
      f.write(text + "\n")
  print(text)


def spin(seconds: float) -> Callable[[int], int]:
  """A contender that busy-waits ``seconds`` per call: the harness's null benchmark (its
  own overhead) and its test (its report: the indices it was called with, in order)."""
  if seconds < 0:
    raise ValueError(f"seconds must be >= 0, got {seconds}")
  indices = []

  def call(i):
    indices.append(i)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
      pass
    return os.getpid()
  call.report = lambda: {"indices": indices}
  return call


def provenance() -> dict:
  """Where a figure comes from: date and time, CPU model, the commit (+dirty), the command."""
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def git(*args):
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None

  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  commit = git("rev-parse", "--short", "HEAD")
  dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  return {"datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "cpu_model": cpu, "cpu_count": os.cpu_count(),
          "commit": commit and commit + ("+dirty" if dirty else ""),
          "command": " ".join([os.path.relpath(sys.argv[0], root)] + sys.argv[1:])}


def summary(times_s: list[float], digits: int = 5) -> dict:
  """Median, quartiles (the spread) and the individual runs, rounded."""
  q1, _, q3 = (statistics.quantiles(times_s, n=4, method="inclusive") if len(times_s) > 1
                else [times_s[0]] * 3)
  return {"median_s": round(statistics.median(times_s), digits), "q1_s": round(q1, digits),
          "q3_s": round(q3, digits), "runs_s": [round(t, digits) for t in times_s]}


def environment() -> dict:
  """What the figures were measured on: date, host CPU count and load, JAX's device."""
  import jax
  dev = jax.devices()[0]
  return {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
          "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
          "jax": jax.__version__, "platform": dev.platform, "device": str(dev.device_kind),
          "device_count": jax.device_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def matmul_peak_flops(n: int = 2048, dtype=None, runs: int = 7) -> float:
  """Measured FLOP/s of `matmul_call`'s square matmul (``dtype`` a JAX dtype; default
  float32), here in this process (median of ``runs``): the denominator of model FLOPs
  utilisation, measured in the same run as the model."""
  import jax.numpy as jnp
  call = matmul_call(n, jnp.dtype(dtype or jnp.float32).name)
  flops = call(0)["flops"]  # compiles
  ts = []
  for i in range(runs):
    start = time.perf_counter()
    call(i + 1)
    ts.append(time.perf_counter() - start)
  return flops / statistics.median(ts)


def matmul_call(n: int = 4096, dtype: str = "float32"):
  """A roofline contender (factory for `isolated`): one call = one jitted n x n x n matmul
  on JAX's default device, XLA's threads on the contender's cores; FLOPs = 2 n^3 (`info`).
  Timed beside the model, it gives the matmul peak that an MFU divides by."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), getattr(jnp, dtype))
  b = jax.random.normal(jax.random.key(1), (n, n), getattr(jnp, dtype))
  f = jax.jit(lambda x, y: x @ y)

  def call(i):
    f(a, b).block_until_ready()
    return {"flops": 2 * n ** 3}
  return call


def copy_call(mib: int = 1024, threads: int = 1, on: str = "torch"):
  """A roofline contender: one call = a STREAM-style copy of ``mib`` MiB (float32), by
  torch on ``threads`` host threads (a copy this large is split among them), or with
  ``on`` = "jax" a jitted scale (y = 2 x) on JAX's default device (an accelerator's
  memory); bytes moved = 2 x size (read + write; `info`). The bandwidth a decode step's
  bytes are measured against."""
  n = mib * 2 ** 18
  if on == "jax":
    import jax
    import jax.numpy as jnp
    x = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda v: v * 2.0)

    def call(i):
      f(x).block_until_ready()
      return {"bytes": 2 * n * 4}
    return call
  import torch
  torch.set_num_threads(threads)
  x = torch.ones(n, dtype=torch.float32)
  y = torch.empty_like(x)

  def call(i):
    y.copy_(x)
    return {"bytes": 2 * n * 4}
  return call


def roofline(result: dict) -> dict:
  """The measured limits from an `isolated` run that had `matmul_call` / `copy_call`
  contenders named 'matmul_peak' / 'copy_bandwidth': medians and quartiles."""
  out = {}
  if "matmul_peak" in result["times_s"]:
    flops = result["info"]["matmul_peak"]["flops"]
    ts = sorted(result["times_s"]["matmul_peak"])
    out["matmul_peak_gflops"] = {**summary(ts, 4),
                                 "median_gflops": round(flops / statistics.median(ts) / 1e9, 1)}
  if "copy_bandwidth" in result["times_s"]:
    moved = result["info"]["copy_bandwidth"]["bytes"]
    ts = sorted(result["times_s"]["copy_bandwidth"])
    out["copy_bandwidth_gbs"] = {**summary(ts, 4),
                                 "median_gbs": round(moved / statistics.median(ts) / 1e9, 2)}
  return out


def decode_step(rollout_s: float, prefill_s: float, new_tokens: int, least_bytes: float,
                limits: dict) -> dict:
  """One decode step from a rollout's time and its 1-token rollout's (the prefill): their
  difference over the C - 1 later steps, and the least bytes it must move
  (`shapes.decode_bytes`) per second, also as a share of the copy bandwidth in ``limits``
  (`roofline`'s). Unrounded: {"step_s", "gb_per_s", "fraction_of_copy_bandwidth"}; the
  rates are None unless step_s > 0 (at tiny sizes the difference of two medians can be
  noise), the share too when no bandwidth was measured."""
  step_s = (rollout_s - prefill_s) / (new_tokens - 1)
  gb_per_s = least_bytes / step_s / 1e9 if step_s > 0 else None
  copy = limits.get("copy_bandwidth_gbs")
  return {"step_s": step_s, "gb_per_s": gb_per_s,
          "fraction_of_copy_bandwidth": (gb_per_s / copy["median_gbs"]
                                         if gb_per_s is not None and copy else None)}


def update_rate(step_s: float, rollout_s: float, flops: float, limits: dict) -> dict:
  """A training update's FLOP rate: its model FLOPs (`shapes.update_flops`) over the step's
  time less the rollout's (the rewards are negligible), also as a share of the matmul peak
  in ``limits`` (`roofline`'s). Unrounded: {"update_s", "gflops_per_s",
  "fraction_of_matmul_peak"}; the rates are None unless update_s > 0 (noise at tiny sizes),
  the share too when no peak was measured."""
  update_s = step_s - rollout_s
  gflops_per_s = flops / update_s / 1e9 if update_s > 0 else None
  peak = limits.get("matmul_peak_gflops")
  return {"update_s": update_s, "gflops_per_s": gflops_per_s,
          "fraction_of_matmul_peak": (gflops_per_s / peak["median_gflops"]
                                      if gflops_per_s is not None and peak else None)}
