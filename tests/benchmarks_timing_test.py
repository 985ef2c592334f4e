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
  assert r["warmup"] == {"a": 2, "b": 1, "c": 1}  # at least the first call each
  assert r["sequential"] and set(r["load_by_contender"]) == {"a", "b", "c"}
  for pid in r["info"].values():  # every worker has exited
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)
  # Exactly one process came first; each other one followed exactly one.
  assert sorted(len(p) for p in r["predecessors"].values()) == [0, 1, 1]


def test_roofline_contenders_report_rates():
  r = _timing.isolated({"matmul_peak": (_timing.matmul_call, {"n": 128}),
                        "copy_bandwidth": (_timing.copy_call, {"mib": 8})}, 3)
  limits = _timing.roofline(r)
  assert limits["matmul_peak_gflops"]["median_gflops"] > 0
  assert limits["copy_bandwidth_gbs"]["median_gbs"] > 0
  assert r["info"]["matmul_peak"] == {"flops": 2 * 128 ** 3}
  assert r["info"]["copy_bandwidth"] == {"bytes": 2 * 8 * 2 ** 20}
