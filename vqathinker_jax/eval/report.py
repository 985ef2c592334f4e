"""Evaluation outputs (docs/method.md §5): answer parsing, a JSON report and a scatter-plot PNG per
data set, and a one-line-per-data-set summary table.

Plots use matplotlib's object API on an Agg canvas (no pyplot), so no global backend is
set and nothing needs a display.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
from typing import Any, Iterable, Sequence

from etils import epath
import numpy as np

from vqathinker_jax.eval import correlation

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")
FALLBACK_SCORE = 3.0


PARSERS = ("reference", "lenient")  # config.eval.parse / config.predict.parse


def parse_eval_answer(text: str | None, parse: str = "lenient") -> tuple[float, bool]:
  """(score, ok) of a generated completion, from its FIRST `<answer>...</answer>`.

  `lenient`: the first number inside it ("Score: 3.45" -> 3.45). `reference`: Python's
  `float()` of its whole content, as the release's evaluation does ("Score: 3.45" -> 3.0,
  " 3.45 " -> 3.45). Without an answer, or when that fails -> (3.0, False); so does a
  non-finite value (e.g. "nan", or 400 digits), which would make the correlations undefined.
  Deliberately unlike the rewards (docs/method.md §3: last answer, whole text if none); the
  lenient number pattern and its Unicode-aware `\\d` are the rewards' own.
  """
  if parse not in PARSERS:
    raise ValueError(f"parse must be one of {PARSERS}, got {parse!r}")
  m = ANSWER_RE.search(text or "")
  if m is None:
    return FALLBACK_SCORE, False
  if parse == "reference":
    try:
      score = float(m.group(1))
    except ValueError:
      return FALLBACK_SCORE, False
  else:
    num = NUMBER_RE.search(m.group(1))
    if num is None:
      return FALLBACK_SCORE, False
    score = float(num.group(0))
  if not math.isfinite(score):
    return FALLBACK_SCORE, False
  return score, True


def parse_failure_rates(texts: Sequence[str | None]) -> dict[str, float]:
  """The share of `texts` each parser fails on: {"parse_failure_rate_<parser>": rate}."""
  n = max(len(texts), 1)
  return {f"parse_failure_rate_{p}": sum(not parse_eval_answer(t, p)[1] for t in texts) / n
          for p in PARSERS}


def _jsonable(v: Any) -> Any:
  """NaN/inf -> None (strict JSON has no NaN), numpy scalars -> Python."""
  if isinstance(v, dict):
    return {k: _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, (np.integer, np.bool_)):
    return v.item()
  if isinstance(v, (float, np.floating)):
    v = float(v)
    return v if math.isfinite(v) else None
  return v


def write_atomic(path, data: bytes | str) -> None:
  """Writes the whole file or nothing: a crash mid-write must not leave a truncated report
  that looks valid. Local disks: a temporary file renamed over ``path``. Object stores
  (`gs://`, through epath): one upload, which is atomic already and has no cheap rename."""
  path = epath.Path(path)
  data = data.encode("utf-8") if isinstance(data, str) else data
  if "://" in os.fspath(path):
    path.write_bytes(data)
    return
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _safe_name(name: str) -> str:
  safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip(".")
  if not safe:
    raise ValueError(f"data set name {name!r} gives an empty file name")
  return safe


def _plot_png(path: epath.Path, name: str, pred: np.ndarray, mos: np.ndarray,
              parse_ok: np.ndarray, m: dict[str, Any]) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(5.5, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  fin = np.isfinite(pred)
  good, bad = fin & parse_ok, fin & ~parse_ok
  ax.scatter(pred[good], mos[good], s=10, alpha=0.6, label="parsed")
  if bad.any():
    ax.scatter(pred[bad], mos[bad], s=18, marker="x", color="tab:red",
               label=f"parse failed ({int(bad.sum())}, scored {FALLBACK_SCORE:g})")
  if m["logistic_params"] is not None:
    xs = np.linspace(pred[fin].min(), pred[fin].max(), 256)
    ax.plot(xs, correlation.logistic4(xs, *m["logistic_params"]), color="black", lw=1.5,
            label="4-parameter logistic fit")
  ax.set_xlabel("predicted score")
  ax.set_ylabel("MOS")
  ax.set_title(f"{name} (n={m['n']})\nSRCC {m['srcc']:.4f}   PLCC {m['plcc']:.4f}   "
               f"PLCC fitted {m['plcc_fitted']:.4f}", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png")
  write_atomic(path, png.getvalue())


def write_report(out_dir, dataset_name: str, video_ids: Sequence[str],
                 predictions: Sequence[float], mos: Sequence[float],
                 texts: Sequence[str | None], parse_ok: Sequence[bool]) -> dict[str, Any]:
  """Writes `{out_dir}/{dataset}.json` and `{dataset}.png`; returns the report.

  JSON: `{"dataset", "metrics": correlation.evaluate(...) + n_parse_fail, parse_failure_rate
  (of the parse that gave `parse_ok`) and parse_failure_rate_<parser> for every parser,
  "videos": [{"video_id", "prediction", "mos", "parse_ok", "text"}, ...]}`, NaN written as
  null. The returned dict is that plus `json_path` and `png_path`. Predictions of failed
  parses are expected to be the fallback already (they are scored as given).
  """
  n = len(video_ids)
  lengths = {"predictions": len(predictions), "mos": len(mos), "texts": len(texts),
             "parse_ok": len(parse_ok)}
  if any(v != n for v in lengths.values()):
    raise ValueError(f"{n} video_ids but lengths {lengths}")
  pred = np.asarray(predictions, np.float64).reshape(n)
  mos_a = np.asarray(mos, np.float64).reshape(n)
  ok = np.asarray(parse_ok, bool).reshape(n)
  m = correlation.evaluate(pred, mos_a)
  n_fail = int((~ok).sum())
  m["n_parse_fail"] = n_fail
  m["parse_failure_rate"] = n_fail / n
  m.update(parse_failure_rates(texts))
  report = {
      "dataset": str(dataset_name),
      "metrics": m,
      "videos": [{"video_id": str(v), "prediction": float(p), "mos": float(s),
                  "parse_ok": bool(o), "text": "" if t is None else str(t)}
                 for v, p, s, o, t in zip(video_ids, pred, mos_a, ok, texts)],
  }
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  stem = _safe_name(dataset_name)
  json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
  report = _jsonable(report)
  write_atomic(json_path, json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False))
  _plot_png(png_path, str(dataset_name), pred, mos_a, ok, m)
  return {**report, "json_path": str(json_path), "png_path": str(png_path)}


def summary_table(reports: Iterable[dict[str, Any]]) -> str:
  """Fixed-width table, a header then one line per report (as `write_report` returns or
  its JSON holds)."""
  reports = list(reports)
  cols = ("n", "fail%", "SRCC", "KRCC", "PLCC", "PLCCfit", "RMSEfit")
  width = max([len("dataset")] + [len(r["dataset"]) for r in reports])

  def num(v, fmt):
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

  lines = [f"{'dataset':<{width}} " + " ".join(f"{c:>7}" for c in cols)]
  for r in reports:
    m = r["metrics"]
    vals = (num(m["n"], "d"), num(100.0 * m["parse_failure_rate"], ".1f"),
            num(m["srcc"], ".4f"), num(m["krcc"], ".4f"), num(m["plcc"], ".4f"),
            num(m["plcc_fitted"], ".4f"), num(m["rmse_fitted"], ".4f"))
    lines.append(f"{r['dataset']:<{width}} " + " ".join(f"{v:>7}" for v in vals))
  return "\n".join(lines)
