"""Training logs: one JSONL line and TensorBoard scalars per logged step, a progress bar
with step/s and ETA, and a compile/step-time report. Only process 0 writes.

Every path goes through epath, so a gs:// workdir works: object stores cannot append, so
there metrics.jsonl is rewritten whole at each `flush`, and TensorBoard events and XLA
traces are written to a local folder and copied over (`_Mirror`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time

from etils import epath
import jax
import numpy as np


def _scalar(v):
  v = np.asarray(v)
  return float(v) if v.ndim == 0 and np.issubdtype(v.dtype, np.number) else None


def _is_url(path) -> bool:
  return "://" in os.fspath(path)


def read_rows(path) -> list[dict]:
  """The rows of a metrics.jsonl; a torn last line (a local run killed mid-append) is
  skipped."""
  path = epath.Path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


class _Mirror:
  """A local folder for writers that need a file system (tensorboardX's event files,
  XLA's trace): the destination itself when it is local, else a temporary folder whose
  files `sync` copies to the destination (changed ones only). tensorboardX would need
  extra packages for gs:// and appends to its event file, which an object store cannot."""

  def __init__(self, dest):
    self.dest = epath.Path(dest)
    self.remote = _is_url(self.dest)
    self.local = tempfile.mkdtemp(prefix="vqathinker-") if self.remote else os.fspath(self.dest)
    self._synced: dict[str, tuple[int, int]] = {}

  def sync(self) -> None:
    if not self.remote:
      return
    for root, _, files in os.walk(self.local):
      for name in files:
        src = os.path.join(root, name)
        st = os.stat(src)
        if self._synced.get(src) == (st.st_size, st.st_mtime_ns):
          continue
        dst = self.dest / os.path.relpath(src, self.local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        epath.Path(src).copy(dst, overwrite=True)
        self._synced[src] = (st.st_size, st.st_mtime_ns)

  def close(self) -> None:
    self.sync()
    if self.remote:
      shutil.rmtree(self.local, ignore_errors=True)


class MetricWriter:
  """`write(step, metrics)` -> workdir/metrics.jsonl and TensorBoard events in workdir/tb.

  ``resume_step``: the step the run continues from (its latest checkpoint; 0: a fresh
  start). Rows an earlier run logged past it are dropped, from the file and from
  TensorBoard (`purge_step`), since the run logs those steps again: a killed and resumed
  run has each step once. Local files are appended to at each row; a gs:// file is
  rewritten whole at each `flush` (the trainer flushes before each checkpoint save, so
  every step a checkpoint holds is in the file) and every `flush_every_s` seconds.
  """

  def __init__(self, workdir, total_steps: int, *, enabled: bool | None = None,
               progress: bool = True, resume_step: int = 0, flush_every_s: float = 60.0):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.remote = _is_url(self.path)
    self.flush_every_s = flush_every_s
    self._tb = self._bar = self._tb_dir = None
    self._dirty, self._flushed_at = False, time.monotonic()
    # Every row of the run, those kept from an earlier run first (the summary reads them).
    self.rows: list[dict] = [r for r in read_rows(self.path)
                             if isinstance(r.get("step"), int) and r["step"] <= resume_step]
    if self.enabled:
      import tensorboardX
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._dirty = self.path.exists()  # rewritten without the dropped rows
      self.flush()
      self._tb_dir = _Mirror(self.path.parent / "tb")
      self._tb = tensorboardX.SummaryWriter(self._tb_dir.local,
                                            purge_step=resume_step + 1 if resume_step else None)
      if progress:
        from tqdm import tqdm
        self._bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, mininterval=1.0)
    self._times: dict[str, list[float]] = {}
    self._waits: dict[str, list[float]] = {}  # seconds each logged step waited for its batch

  def set_position(self, step: int):
    if self._bar is not None:
      self._bar.n = self._bar.last_print_n = step
      self._bar.refresh()

  def write(self, step: int, metrics: dict, phase: str):
    row = {"step": int(step), "phase": phase}
    row.update({k: s for k, v in metrics.items() if (s := _scalar(v)) is not None})
    if "step_time_s" in row:
      self._times.setdefault(phase, []).append(row["step_time_s"])
      if "data_wait_s" in row:
        self._waits.setdefault(phase, []).append(row["data_wait_s"])
    stored = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
              for k, v in row.items()}
    self.rows.append(stored)
    if not self.enabled:
      return row
    if self.remote:
      self._dirty = True
      if time.monotonic() - self._flushed_at >= self.flush_every_s:
        self.flush()
    else:
      with self.path.open("a") as f:
        f.write(json.dumps(stored) + "\n")
    for k, v in row.items():
      if k not in ("step", "phase") and math.isfinite(v):
        self._tb.add_scalar(f"{phase}/{k}", v, step)
    if self._bar is not None:
      self._bar.n = step
      shown = {k: row[k] for k in ("loss", "reward/total", "srcc") if k in row}
      self._bar.set_postfix({"phase": phase, **{k: f"{v:.3f}" for k, v in shown.items()}},
                            refresh=False)
      self._bar.update(0)
    return row

  def flush(self) -> None:
    """Makes every row written so far durable (and TensorBoard's events, for gs://)."""
    if not self.enabled:
      return
    if self._dirty:
      text = "".join(json.dumps(r) + "\n" for r in self.rows)
      if self.remote:  # one object, replaced whole: readers never see a partial file
        self.path.write_text(text)
      else:  # only when dropping an earlier run's rows: a rename keeps it whole too
        tmp = self.path.parent / f".{self.path.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path)
      self._dirty = False
    if self._tb is not None:
      self._tb.flush()
      self._tb_dir.sync()
    self._flushed_at = time.monotonic()

  def timing_report(self, compile_s: dict[str, float]) -> dict:
    """Per phase: compile seconds, median and p90 step seconds and the share of the time
    spent waiting for input (`data_wait_frac`: total wait / (wait + steps)); the first step
    excluded."""
    out = {}
    for phase, times in self._times.items():
      t = np.asarray(times[1:] or times)
      out[phase] = dict(compile_s=round(compile_s.get(phase, float("nan")), 2),
                        steps=len(times), median_step_s=round(float(np.median(t)), 4),
                        p90_step_s=round(float(np.percentile(t, 90)), 4))
      waits = self._waits.get(phase, [])
      if len(waits) == len(times):
        w = np.asarray(waits[1:] or waits)
        out[phase].update(median_data_wait_s=round(float(np.median(w)), 5),
                          data_wait_frac=round(float(w.sum() / (w.sum() + t.sum())), 4))
    return out

  def close(self):
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
      self._tb_dir.close()
      self._tb = None
    self.flush()


class Profiler:
  """An XLA trace of steps [start, end) into `workdir/profile` (TensorBoard/XProf); for a
  gs:// workdir written locally and copied there when the trace stops."""

  def __init__(self, workdir, start: int, end: int):
    self.dir = epath.Path(workdir) / "profile"
    self.start, self.end, self.active = start, end, False
    self._mirror = None

  def before(self, step: int):
    if self.start >= 0 and step == self.start and not self.active:
      self._mirror = _Mirror(self.dir)
      jax.profiler.start_trace(self._mirror.local)
      self.active = True

  def after(self, step: int, block=None):
    """Call after step `step` ran; `block` is waited on so the trace holds the device work."""
    if self.active and step + 1 >= self.end:
      jax.block_until_ready(block)
      self._stop()

  def _stop(self):
    jax.profiler.stop_trace()
    self.active = False
    self._mirror.close()

  def close(self):
    if self.active:
      self._stop()


class Timer:
  """Wall-clock seconds of a block: `with timer('compile/grpo'): ...`."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  def add(self, name: str, seconds: float) -> None:
    self.seconds[name] = self.seconds.get(name, 0.0) + seconds

  def __call__(self, name):
    timer = self

    class _Block:
      def __enter__(self):
        self.t0 = time.perf_counter()

      def __exit__(self, *exc):
        timer.add(name, time.perf_counter() - self.t0)
    return _Block()


def render_summary(summary: dict) -> str:
  """The end-of-training report a person reads: evaluation before/after GRPO, the reward
  curve, timings and where everything is."""
  lines = [f"trained {summary['sft_steps']} SFT + {summary['grpo_steps']} GRPO steps"]
  for tag, sets in summary.get("eval", {}).items():
    for name, m in sets.items():
      same = m.get("n_distinct_pred") == 1  # correlations undefined: no ranking at all
      lines.append(f"  eval {tag:>8} {name}: SRCC {_fmt(m.get('srcc'))}  PLCC "
                   f"{_fmt(m.get('plcc'))}  PLCC fitted {_fmt(m.get('plcc_fitted'))}  "
                   f"parse failures {_fmt(m.get('parse_failure_rate'))}"
                   + (f"  (one score for all {m.get('n')} videos)" if same else ""))
  curve = summary.get("reward_curve") or []
  if curve:
    lines.append(f"  mean reward per GRPO step (± spread over steps): first quarter "
                 f"{_fmt(summary['reward_first'])} ± {_fmt(summary.get('reward_first_std'))} -> "
                 f"last quarter {_fmt(summary['reward_last'])} ± "
                 f"{_fmt(summary.get('reward_last_std'))}")
    lines.append(f"    {_spark(_bins(curve, 60))}")
  for phase, t in summary.get("timing", {}).items():
    wait = (f", waiting for input {100 * t['data_wait_frac']:.1f} % of the time"
            if "data_wait_frac" in t else "")
    lines.append(f"  {phase}: compile {t['compile_s']} s, median step {t['median_step_s']} s "
                 f"(p90 {t['p90_step_s']} s) over {t['steps']} logged steps{wait}")
  for k in ("checkpoints", "export", "reports", "tensorboard", "metrics"):
    if k in summary:
      v = summary[k]
      lines.append(f"  {k}: " + (", ".join(f"{t}={p}" for t, p in v.items())
                                 if isinstance(v, dict) else str(v)))
  return "\n".join(lines)


def _fmt(v) -> str:
  return "n/a" if v is None else f"{v:.3f}"


def _bins(values, n: int) -> list[float]:
  """Means of up to n consecutive, equal slices (a curve that fits a line)."""
  edges = np.linspace(0, len(values), min(n, len(values)) + 1).astype(int)
  return [float(np.mean(values[a:b])) for a, b in zip(edges[:-1], edges[1:])]


def _spark(values) -> str:
  bars = "▁▂▃▄▅▆▇█"
  lo, hi = min(values), max(values)
  span = (hi - lo) or 1.0
  return "".join(bars[int((v - lo) / span * (len(bars) - 1))] for v in values)
