"""Float tolerances in rounding units of a quantity's scale.

Two float32 programs that compute the same thing with their sums in another order (another
sharding, another CPU's kernels, XLA against torch) differ by the rounding of the terms
they add up. That rounding is set by the size of the numbers involved, not by the size of
one result: a logit near 0 still carries the rounding of the products that cancelled in
it. So every comparison here allows

    |got - want| <= ulps * eps * scale        (eps = 2**-23 for float32)

with `scale` the quantity's magnitude (max |want| unless the call site knows a better one,
possibly per element) and `ulps` the rounding budget, stated where the comparison is made.
The budgets are about 4x the largest error seen under the float orderings listed in
tests/README.md; a real bug (a wrong mask, a dropped term) is orders of magnitude larger.

`VQA_TOLERANCE_LOG=path` appends every comparison's observed error, in these units, to
`path`; `python tests/tolerance.py path...` prints the largest per comparison against its
budget.
"""

from __future__ import annotations

import collections
import json
import os
import sys

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)   # 2**-23: float32's rounding unit at 1.0
EPS64 = float(np.finfo(np.float64).eps)   # for float64 restatements (scipy, numpy)
EPS_BF16 = 2.0 ** -7                      # bfloat16 keeps 7 explicit mantissa bits

# Budgets shared by several files (in units of EPS32 at the quantity's scale).
# Logits of the tiny InternVL (ViT 2 layers, LLM 2 layers) from XLA against transformers,
# each side summing in its own order.
LOGITS_VS_TORCH = 100
# One program against itself on another mesh: split matmuls and all-reduces re-associate.
SHARDED = 170
# Correlations and RMSEs in float64 against scipy's (units of EPS64 at scale 1): normalised
# sums of up to ~7,000 terms, centred and summed in each implementation's own order.
CORR_VS_SCIPY = 14


def assert_close(got, want, ulps: float, *, scale=None, where=None, eps: float = EPS32,
                 plus: float = 0.0, name: str = "") -> float:
  """Assert |got - want| <= ulps * eps * scale + plus elementwise; returns the observed
  ulps (of the error beyond `plus`).

  scale: a number or an array broadcastable to `want` (default: max |want|).
  where: a boolean mask (or index) selecting the elements compared (e.g. valid tokens).
  plus: an allowance that the arithmetic adds on top of rounding, stated at the call site
    (e.g. how far an optimiser's normalised step may move; 0 almost everywhere).
  """
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if got.shape != want.shape:
    raise AssertionError(f"{name or 'values'}: shape {got.shape} != {want.shape}")
  if scale is None:
    scale = np.abs(want[where] if where is not None else want).max(initial=0.0)
  scale = np.broadcast_to(np.asarray(scale, np.float64), want.shape)
  if where is not None:
    got, want, scale = got[where], want[where], scale[where]
  err = np.maximum(np.abs(got - want) - plus, 0.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    units = np.where(err == 0, 0.0, err / (eps * scale))  # NaN anywhere stays NaN
  observed = float(units.max(initial=0.0)) if not np.isnan(units).any() else float("nan")
  _log(name, observed, ulps, eps)
  if not observed <= ulps:
    i = np.unravel_index(np.nanargmax(np.where(np.isnan(units), np.inf, units)), units.shape) \
        if units.size else ()
    raise AssertionError(
        f"{name or 'values'} differ by {observed:.1f} rounding units of their scale, "
        f"{ulps} allowed; worst at {tuple(int(j) for j in i)}: got {got[i]!r}, want "
        f"{want[i]!r}, scale {scale[i]:.3g} (eps {eps:.3g})")
  return observed


def _log(name: str, observed: float, ulps: float, eps: float) -> None:
  path = os.environ.get("VQA_TOLERANCE_LOG")
  if not path:
    return
  test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
  with open(path, "a") as f:
    f.write(json.dumps({"test": test, "name": name, "observed": observed, "ulps": ulps,
                        "eps": eps, "run": os.environ.get("VQA_TOLERANCE_RUN", "")}) + "\n")


def summarize(paths: list[str]) -> str:
  """Per comparison: the largest error seen in any run (in ulps), its budget and margin."""
  worst = collections.defaultdict(lambda: [0.0, 0.0, set(), ""])
  for path in paths:
    for line in open(path):
      r = json.loads(line)
      w = worst[(r["test"], r["name"])]
      if not r["observed"] <= w[0]:
        w[0], w[3] = r["observed"], r["run"]
      w[1] = r["ulps"]
      w[2].add(r["run"])
  rows = ["margin  observed    budget  runs  worst-run  comparison"]
  for (test, name), (obs, ulps, runs, run) in sorted(
      worst.items(), key=lambda kv: kv[1][1] / max(kv[1][0], 1e-9)):
    margin = ulps / obs if obs > 0 else float("inf")
    rows.append(f"{margin:6.1f}  {obs:8.2f}  {ulps:8g}  {len(runs):4d}  {run[:9]:9s}  "
                f"{test}{' ' + name if name else ''}")
  return "\n".join(rows)


if __name__ == "__main__":
  print(summarize(sys.argv[1:]))
