"""Timing scaffolding shared by the benchmark scripts: the `--xla_flags` flag, interleaved
runs, medians, the machine's description and its measured matmul peak (the denominator of
MFU)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from typing import Callable

from absl import flags

_XLA_FLAGS = flags.DEFINE_string("xla_flags", "", "appended to XLA_FLAGS before JAX starts")


def apply_xla_flags() -> None:
  """Appends ``--xla_flags`` to XLA_FLAGS: call in `main`, before anything imports JAX."""
  if _XLA_FLAGS.value:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_FLAGS.value}".strip()


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


def summary(times_s: list[float], digits: int = 5) -> dict:
  """Median and the individual runs, rounded."""
  return {"median_s": round(statistics.median(times_s), digits),
          "runs_s": [round(t, digits) for t in times_s]}


def environment() -> dict:
  """What the figures were measured on: date, host CPU count and load, JAX's device."""
  import jax
  dev = jax.devices()[0]
  return {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
          "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
          "jax": jax.__version__, "platform": dev.platform, "device": str(dev.device_kind),
          "device_count": jax.device_count(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def matmul_peak_flops(n: int = 2048, dtype=None, runs: int = 7) -> float:
  """Measured FLOP/s of a square matmul on the default device (median of ``runs``): the
  denominator of model FLOPs utilisation, measured in the same run as the model."""
  import jax
  import jax.numpy as jnp
  dtype = dtype or jnp.float32
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  ts = []
  for _ in range(runs):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    ts.append(time.perf_counter() - start)
  return 2 * n ** 3 / statistics.median(ts)
