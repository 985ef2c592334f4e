"""Two processes on one machine train as one process does: the demo config, shrunk, on 2
processes x 2 CPU devices against 1 process x 4 devices, the same (data=1, fsdp=4) mesh,
so parameters and batches are split across the processes. The two-process run is
SIGKILLed after its first GRPO checkpoint and rerun; it must end with the one-process
run's parameters, exit 0 on both processes, and leave the shared outputs to process 0.

The one-process run has a coordinator too, so that both runs sum across devices with the
same collectives (gloo, one rank per device) in the same order, and the results match
bitwise. Against XLA's in-process collectives they would not, and Adam amplifies that
rounding: it moves a parameter by about the learning rate whatever the size of its
gradient, so a gradient that rounds to +1e-9 in one order and -1e-9 in the other gives
steps 2 x lr apart (seen: 3e-3 of a parameter's scale after 2 steps), as far apart as
training on other data would.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

import one_device

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRPO, KILL_AFTER = 3, 1  # GRPO from the random init (no SFT: its compile would add 20 s)
TINY = [
    "--config.data.synthetic.num_videos=16", "--config.data.synthetic.num_frames=8",
    "--config.data.synthetic.test_fraction=0.5", "--config.sft.steps=0",
    "--config.train.batch_size=4", f"--config.train.num_steps={GRPO}",
    "--config.train.checkpoint_every=1", "--config.grpo.num_generations=2",
    "--config.grpo.max_completion_length=12", "--config.eval.batch_size=4",
    "--config.eval.max_new_tokens=12", "--config.model.arch.vision.num_layers=1",
    "--config.model.arch.text.num_layers=1", "--config.mesh.data=1", "--config.mesh.fsdp=4",
]
TIMEOUT_S = 300  # per launch; a hung collective fails the test instead of stalling CI


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir: pathlib.Path, logs: pathlib.Path, processes: int, devices: int):
  """Starts the entry point as `processes` processes of `devices` CPU devices each, every
  one in its own process group (a kill then reaches its data-building children too)."""
  port = _free_port()
  logs.mkdir(parents=True, exist_ok=True)
  children = []
  for i in range(processes):
    env = one_device.env(
        JAX_PLATFORMS="cpu", VQA_WRITE_LOG=str(logs / f"writes_{i}.txt"),
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(i))
    env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
    with open(logs / f"out_{i}.txt", "ab") as out:
      children.append(subprocess.Popen(
          [sys.executable, str(ROOT / "tests/audited_main.py"), "--config",
           str(ROOT / "configs/demo.py"), "--workdir", str(workdir), *TINY],
          cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
  return children


def _kill(children):
  for c in children:
    if c.poll() is None:
      os.killpg(c.pid, signal.SIGKILL)
  for c in children:
    c.wait()


def _tails(logs: pathlib.Path) -> str:
  return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                   for p in sorted(logs.glob("out_*.txt")))


def _wait(children, logs, until=None) -> list[int]:
  """Return codes once every child exits, or once one fails (the others are SIGKILLed:
  they would wait minutes for it at a collective), or once `until()` holds (all are
  SIGKILLed); on a timeout they are killed and the test fails with their output."""
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while time.monotonic() < deadline:
      codes = [c.poll() for c in children]
      if (until is not None and until()) or any(codes) or None not in codes:
        _kill(children)
        return [c.returncode for c in children]
      time.sleep(0.05)
    pytest.fail(f"no end in {TIMEOUT_S} s\n{_tails(logs)}")
  finally:
    _kill(children)


def _rows(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _writes(logs: pathlib.Path, process: int, workdir: pathlib.Path) -> set[str]:
  """What a process wrote under workdir (relative paths), over all its launches."""
  path = logs / f"writes_{process}.txt"
  lines = path.read_text().splitlines() if path.exists() else []
  return {os.path.relpath(l, workdir) for l in lines if l.startswith(f"{workdir}{os.sep}")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(one-process workdir, two-process workdir, two-process logs); the two-process run
  killed after step KILL_AFTER's checkpoint and rerun."""
  tmp = tmp_path_factory.mktemp("multihost")
  one, two, logs = tmp / "one", tmp / "two", tmp / "logs_two"
  rc = _wait(_launch(one, tmp / "logs_one", 1, 4), tmp / "logs_one")
  assert rc == [0], _tails(tmp / "logs_one")
  ckpt = two / "checkpoints" / str(KILL_AFTER)  # Orbax renames a step here once complete
  rc = _wait(_launch(two, logs, 2, 2), logs, until=ckpt.is_dir)
  assert ckpt.is_dir(), f"ended before step {KILL_AFTER}'s checkpoint: {rc}\n{_tails(logs)}"
  assert rc == [-signal.SIGKILL] * 2 and not (two / "export").exists(), _tails(logs)
  rc = _wait(_launch(two, logs, 2, 2), logs)
  assert rc == [0, 0], _tails(logs)
  return one, two, logs


def test_killed_two_process_run_ends_with_the_one_process_parameters(runs):
  one, two, _ = runs
  want = load_file(one / "export" / "model.safetensors")
  got = load_file(two / "export" / "model.safetensors")
  assert got.keys() == want.keys()
  differ = {k: float(np.abs(got[k] - w).max() / (np.abs(w).max() or 1.0))
            for k, w in want.items() if got[k].tobytes() != w.tobytes()}
  assert not differ, f"{len(differ)} of {len(want)} tensors differ (max relative): {differ}"


def test_the_rerun_resumed_and_both_runs_logged_the_same_steps(runs):
  one, two, _ = runs
  # The rerun continued from the checkpoint: it ran only the steps after it, and did not
  # evaluate the starting policy again.
  summary = json.loads((two / "summary.json").read_text())
  assert summary["timing"]["grpo"]["steps"] == GRPO - KILL_AFTER
  assert set(summary["eval_seconds"]) == {"eval/final"}
  assert set(summary["eval"]) == {"init", "final"}
  a, b = _rows(one), _rows(two)
  # Each step once: rows the killed run logged past its checkpoint were dropped.
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, GRPO + 1))
  # The steps after the kill learned something (else equal parameters would prove
  # nothing about the restored data), and on the same batches and completions.
  assert all(r["grad_norm"] > 0 for r in b[KILL_AFTER:])
  for x, y in zip(a, b):
    keys = [k for k in x if not k.endswith("_s")]  # not the timings
    assert {k: (x[k], y.get(k)) for k in keys if x[k] != y.get(k)} == {}, x["step"]


def test_only_process_0_writes_the_shared_outputs(runs):
  _, two, logs = runs
  first, second = _writes(logs, 0, two), _writes(logs, 1, two)
  outputs = {"metrics.jsonl", "summary.json", "tokenizer/tokenizer.json",
             "eval/init/summary.json", "eval/final/summary.json", "export/tokenizer.json",
             "export/model.safetensors"}
  for f in outputs:
    assert (two / f).exists(), f
  # Process 0 wrote them (the audit sees its writes), TensorBoard's events too ...
  assert outputs <= first, sorted(outputs - first)
  assert any(p.startswith("tb/") for p in first)
  # ... and process 1 nothing but its own part of the checkpoints.
  assert {p for p in second if not p.startswith("checkpoints/")} == set(), sorted(second)
