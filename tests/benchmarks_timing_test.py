"""benchmarks/_timing.isolated: one pinned process per contender, a random call order in
which every contender follows every other, errors named."""

import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import _timing  # noqa: E402


def test_each_contender_runs_in_its_own_pinned_process_in_random_order():
  cores = sorted(os.sched_getaffinity(0))[:1]
  contenders = {name: (_timing.spin, {"seconds": 0.002}) for name in ("a", "b", "c")}
  r = _timing.isolated(contenders, runs=30, cores=cores, env={"OMP_NUM_THREADS": "1"}, seed=3)
  pids = set(r["info"].values())
  assert len(pids) == 3 and os.getpid() not in pids  # three processes, none of them ours
  assert r["cores"] == cores and r["env"] == {"OMP_NUM_THREADS": "1"}
  for name, times in r["times_s"].items():
    assert len(times) == 30 and min(times) >= 0.002
    # Every other contender precedes this one, each about a third of the 30 calls
    # (a fixed rotation would give one predecessor only).
    before = r["predecessors"][name]
    assert set(before) == set(contenders) - {name} or set(before) == set(contenders)
    assert min(before.get(o, 0) for o in contenders if o != name) >= 4
  orders = _timing.isolated(contenders, runs=6, cores=cores, seed=4)["predecessors"]
  assert orders != r["predecessors"]
  summary = _timing.summary(r["times_s"]["a"])
  assert summary["q1_s"] <= summary["median_s"] <= summary["q3_s"]


def test_a_failing_contender_is_named():
  with pytest.raises(RuntimeError, match=r"contender 'bad' failed:(.|\n)*seconds must be >= 0"):
    _timing.isolated({"ok": (_timing.spin, {"seconds": 0.0}),
                      "bad": (_timing.spin, {"seconds": -1.0})}, runs=2)


def test_provenance_names_commit_cpu_and_command():
  p = _timing.provenance()
  assert p["cpu_model"] and p["cpu_count"] >= 1 and p["command"]
  assert p["commit"] is None or len(p["commit"].split("+")[0]) >= 7


def test_sequential_runs_each_process_alone_with_its_own_counts():
  """Contenders too big to share memory: each process starts after the previous one has
  exited (no two pids alive together), with per-contender warm-up and run counts."""
  contenders = {name: (_timing.spin, {"seconds": 0.001}) for name in ("a", "b", "c")}
  r = _timing.isolated(contenders, {"a": 3, "b": 1, "c": 0}, sequential=True, seed=1,
                       warmup={"a": 2, "b": 0})
  assert {n: len(t) for n, t in r["times_s"].items()} == {"a": 3, "b": 1, "c": 0}
  assert r["warmup"] == {"a": 2, "b": 0, "c": 1}  # b: its first call is its one run
  assert r["sequential"] and set(r["load_by_contender"]) == {"a", "b", "c"}
  for pid in r["info"].values():  # every worker has exited
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
  # Exactly one process came first; each other one followed exactly one.
  assert sorted(len(p) for p in r["predecessors"].values()) == [0, 1, 1]


def test_warmup_0_times_the_first_call_as_one_of_the_runs():
  """A peer that compiles nothing (calls of minutes): with warmup 0 its first call is the
  first of its timed runs, and runs - 1 calls follow it; in rounds and alone in turn."""
  contenders = {name: (_timing.spin, {"seconds": 0.001}) for name in ("peer", "ours")}
  for sequential in (False, True):
    r = _timing.isolated(contenders, 3, warmup={"peer": 0, "ours": 2}, seed=2,
                         sequential=sequential)
    assert r["warmup"] == {"peer": 0, "ours": 2}
    assert {n: len(t) for n, t in r["times_s"].items()} == {"peer": 3, "ours": 3}
    assert r["times_s"]["peer"][0] == r["first_s"]["peer"]
    # Every call of the peer's is timed; ours makes 2 untimed ones first.
    assert r["reports"]["peer"] == {"indices": [0, 1, 2]}
    assert r["reports"]["ours"] == {"indices": [0, 1, 2, 3, 4]}
  with pytest.raises(ValueError, match="warmup 0 with 0 runs"):
    _timing.isolated({"peer": (_timing.spin, {"seconds": 0.0})}, 0, warmup=0)


def test_decode_step_and_update_rate_by_hand():
  limits = {"copy_bandwidth_gbs": {"median_gbs": 50.0},
            "matmul_peak_gflops": {"median_gflops": 400.0}}
  # A 4-token rollout of 2 s, its prefill (1 token) 0.5 s: 3 decode steps of 0.5 s, each
  # moving 10 GB: 20 GB/s, 0.4 of the 50 GB/s copy.
  d = _timing.decode_step(2.0, 0.5, 4, 10e9, limits)
  assert d == pytest.approx({"step_s": 0.5, "gb_per_s": 20.0,
                             "fraction_of_copy_bandwidth": 0.4})
  # A 3 s step of which 2 s rollout: 200 GFLOP in 1 s, half the 400 GFLOP/s peak.
  u = _timing.update_rate(3.0, 2.0, 200e9, limits)
  assert u == pytest.approx({"update_s": 1.0, "gflops_per_s": 200.0,
                             "fraction_of_matmul_peak": 0.5})
  # Noise (a difference <= 0): no rates; no limits measured: no shares.
  assert _timing.decode_step(1.0, 1.0, 4, 10e9, limits) == {
      "step_s": 0.0, "gb_per_s": None, "fraction_of_copy_bandwidth": None}
  assert _timing.update_rate(2.0, 2.5, 200e9, limits)["gflops_per_s"] is None
  assert _timing.decode_step(2.0, 0.5, 4, 10e9, {})["fraction_of_copy_bandwidth"] is None
  assert _timing.update_rate(3.0, 2.0, 200e9, {})["fraction_of_matmul_peak"] is None


def test_matmul_peak_flops_times_the_matmul_contender():
  import jax.numpy as jnp
  assert _timing.matmul_peak_flops(n=64, dtype=jnp.bfloat16, runs=2) > 0


def test_roofline_contenders_report_rates():
  r = _timing.isolated({"matmul_peak": (_timing.matmul_call, {"n": 128}),
                        "copy_bandwidth": (_timing.copy_call, {"mib": 8})}, 3)
  limits = _timing.roofline(r)
  assert limits["matmul_peak_gflops"]["median_gflops"] > 0
  assert limits["copy_bandwidth_gbs"]["median_gbs"] > 0
  assert r["info"]["matmul_peak"] == {"flops": 2 * 128 ** 3}
  assert r["info"]["copy_bandwidth"] == {"bytes": 2 * 8 * 2 ** 20}
