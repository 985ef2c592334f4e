"""VQA correlation metrics (docs/method.md §5) in plain numpy: SRCC, KRCC (tau-b), PLCC raw and after
the standard 4-parameter logistic fit, RMSE.

scipy is a test-only dependency, so ranking, Kendall's tau-b and the logistic least-squares
fit (Levenberg-Marquardt) are implemented here; tests check them against `scipy.stats` and
`scipy.optimize.curve_fit`. Everything is computed in float64. Undefined correlations
(constant inputs) are NaN, never an exception.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MIN_POINTS = 3


# ----------------------------------------------------------------------------- correlations

def rankdata(a) -> np.ndarray:
  """1-based ranks, ties get the average of their ranks (`scipy.stats.rankdata` 'average')."""
  a = np.asarray(a, np.float64).ravel()
  order = np.argsort(a, kind="mergesort")
  s = a[order]
  # Boundaries of runs of equal values in sorted order.
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
  ends = np.r_[starts[1:], len(a)]                 # exclusive
  avg = (starts + ends + 1) / 2.0                  # mean of ranks starts+1 .. ends
  ranks = np.empty(len(a), np.float64)
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def pearson(x, y) -> float:
  """Pearson's r; NaN if either input is constant."""
  x = np.asarray(x, np.float64).ravel()
  y = np.asarray(y, np.float64).ravel()
  if x.size < 2:
    return math.nan
  xm, ym = x - x.mean(), y - y.mean()
  nx, ny = np.linalg.norm(xm), np.linalg.norm(ym)
  # A float mean of a constant array can leave ~1e-16 residues; treat those as constant.
  if nx == 0.0 or ny == 0.0 or np.all(x == x[0]) or np.all(y == y[0]):
    return math.nan
  r = float(np.dot(xm / nx, ym / ny))
  return max(-1.0, min(1.0, r))


def spearman(x, y) -> float:
  """Spearman's rho: Pearson's r of average ranks."""
  return pearson(rankdata(x), rankdata(y))


def _dense_ranks(a: np.ndarray) -> np.ndarray:
  """0-based dense ranks (equal values share a rank)."""
  return np.unique(a, return_inverse=True)[1].ravel()


def _tie_pairs(codes: np.ndarray) -> int:
  cnt = np.unique(codes, return_counts=True)[1].astype(np.int64)
  return int((cnt * (cnt - 1) // 2).sum())


def _count_inversions(y: np.ndarray) -> int:
  """Pairs i < j with y[i] > y[j], via a Fenwick tree over dense ranks; O(n log n)."""
  m = int(y.max()) + 1 if len(y) else 0
  tree = [0] * (m + 1)
  inv = 0
  for seen, v in enumerate(y.tolist()):
    # Count earlier values <= v, so the rest (> v) are inversions.
    i, le = v + 1, 0
    while i > 0:
      le += tree[i]
      i -= i & -i
    inv += seen - le
    i = v + 1
    while i <= m:
      tree[i] += 1
      i += i & -i
  return inv


def kendall_tau_b(x, y) -> float:
  """Kendall's tau-b (ties in x and in y corrected); NaN if either input is constant."""
  x = _dense_ranks(np.asarray(x, np.float64).ravel())
  y = _dense_ranks(np.asarray(y, np.float64).ravel())
  n = len(x)
  # Sort by (x, y): pairs tied in x are then never inversions in y, so the inversion count
  # is exactly the number of discordant pairs.
  order = np.lexsort((y, x))
  dis = _count_inversions(y[order])
  tot = n * (n - 1) // 2
  xtie, ytie = _tie_pairs(x), _tie_pairs(y)
  xytie = _tie_pairs(x * (int(y.max()) + 1) + y)
  if tot == xtie or tot == ytie:
    return math.nan
  con_minus_dis = tot - xtie - ytie + xytie - 2 * dis   # exact integer arithmetic
  # One sqrt of the exact integer product: a perfect order gives exactly +-1.
  tau = con_minus_dis / math.sqrt((tot - xtie) * (tot - ytie))
  return max(-1.0, min(1.0, tau))


def rmse(a, b) -> float:
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  return float(np.sqrt(np.mean((a - b) ** 2)))


# ----------------------------------------------------------------------------- logistic fit

def logistic4(x, b1, b2, b3, b4):
  """The VQA mapping `(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`."""
  x = np.asarray(x, np.float64)
  z = (x - b3) / abs(b4)
  # 0.5 (1 + tanh(z / 2)) is the sigmoid without exp overflow for large |z|.
  return (b1 - b2) * 0.5 * (1.0 + np.tanh(0.5 * z)) + b2


def _residual_jacobian(p: np.ndarray, x: np.ndarray, y: np.ndarray):
  b1, b2, b3, b4 = p
  a = abs(b4)
  z = (x - b3) / a
  s = 0.5 * (1.0 + np.tanh(0.5 * z))
  r = (b1 - b2) * s + b2 - y
  ds = (b1 - b2) * s * (1.0 - s)
  jac = np.stack([s, 1.0 - s, -ds / a, -ds * z / a * np.sign(b4)], axis=1)
  return r, jac


def _levenberg_marquardt(p0, x, y, max_iter=500, tol=1e-15):
  """Minimise ||logistic4(x, p) - y||^2 from p0; returns (params, sse)."""
  p = np.asarray(p0, np.float64).copy()
  r, jac = _residual_jacobian(p, x, y)
  cost = float(r @ r)
  lam = 1e-3
  for _ in range(max_iter):
    g = jac.T @ r
    h = jac.T @ jac
    # Marquardt scaling (damp along diag(H)) keeps steps sensible across parameter scales;
    # the floor keeps the system solvable where a column vanishes (b1 == b2, saturation).
    d = np.maximum(np.diag(h), 1e-12 * max(1.0, float(np.max(np.diag(h)))))
    improved = False
    while lam < 1e16:
      try:
        step = np.linalg.solve(h + lam * np.diag(d), -g)
      except np.linalg.LinAlgError:
        lam *= 10.0
        continue
      q = p + step
      if q[3] == 0.0:                              # |b4| = 0 is a step function: reject
        lam *= 10.0
        continue
      rq, jq = _residual_jacobian(q, x, y)
      cq = float(rq @ rq)
      if np.isfinite(cq) and cq <= cost:
        improved = True
        rel = (cost - cq) / max(cost, 1e-300)
        small = np.all(np.abs(step) <= 1e-12 * (np.abs(p) + 1e-12))
        p, r, jac, cost = q, rq, jq, cq
        lam = max(lam / 10.0, 1e-12)
        break
      lam *= 10.0
    if not improved or rel <= tol or small or cost == 0.0:
      break
  return p, cost


def fit_logistic(pred, mos) -> np.ndarray | None:
  """Least-squares 4-parameter logistic mapping pred -> mos, or None if no finite fit.

  Starts at the usual b1 = max(mos), b2 = min(mos), b3 = mean(pred) (b1, b2 swapped for a
  negative trend) with a few slopes b4, and keeps the best fit: one start can stall in the
  flat saturated region of the sigmoid.
  """
  x = np.asarray(pred, np.float64).ravel()
  y = np.asarray(mos, np.float64).ravel()
  sx = float(np.std(x))
  if sx == 0.0 or np.all(y == y[0]):
    return None
  hi, lo = float(np.max(y)), float(np.min(y))
  if pearson(x, y) < 0:
    hi, lo = lo, hi
  best, best_cost = None, math.inf
  for b4 in (sx / 4, sx, 4 * sx, 0.5):
    p, cost = _levenberg_marquardt([hi, lo, float(np.mean(x)), b4], x, y)
    if np.all(np.isfinite(p)) and np.isfinite(cost) and cost < best_cost:
      best, best_cost = p, cost
  if best is None:
    return None
  best[3] = abs(best[3])   # sign of b4 is irrelevant; report the canonical one
  return best


# ----------------------------------------------------------------------------- evaluate

def evaluate(pred, mos) -> dict[str, Any]:
  """All docs/method.md §5 metrics of predictions against MOS.

  Non-finite predictions (should not happen: parse failures become 3.0 upstream) are
  excluded and counted in `n_nonfinite_pred`; `n` is the number of pairs used. Correlations
  of constant inputs are NaN. Fitted fields are NaN and `logistic_params` None when the fit
  is impossible (constant predictions) or fails.

  Raises:
    ValueError: mismatched lengths, non-finite MOS, or fewer than 3 usable pairs.
  """
  pred = np.asarray(pred, np.float64).ravel()
  mos = np.asarray(mos, np.float64).ravel()
  if pred.shape != mos.shape:
    raise ValueError(f"pred has {pred.size} values but mos has {mos.size}")
  if not np.all(np.isfinite(mos)):
    raise ValueError(f"mos has {int(np.sum(~np.isfinite(mos)))} non-finite values")
  ok = np.isfinite(pred)
  n_bad = int(np.sum(~ok))
  x, y = pred[ok], mos[ok]
  if x.size < MIN_POINTS:
    raise ValueError(f"need at least {MIN_POINTS} finite (pred, mos) pairs, got {x.size} "
                     f"({n_bad} non-finite predictions excluded)")
  params = fit_logistic(x, y)
  if params is not None:
    fitted = logistic4(x, *params)
    plcc_fit, rmse_fit = pearson(fitted, y), rmse(fitted, y)
  else:
    plcc_fit = rmse_fit = math.nan
  return {
      "n": int(x.size),
      "n_total": int(pred.size),
      "n_nonfinite_pred": n_bad,
      # 1: every video got the same score, so no correlation is defined (NaN): no ranking
      "n_distinct_pred": int(np.unique(x).size),
      "srcc": spearman(x, y),
      "krcc": kendall_tau_b(x, y),
      "plcc": pearson(x, y),
      "plcc_fitted": plcc_fit,
      "rmse": rmse(x, y),
      "rmse_fitted": rmse_fit,
      "logistic_params": None if params is None else [float(b) for b in params],
  }
