"""numpy metrics against scipy.stats and scipy.optimize.curve_fit (scipy is test-only)."""

import math
import warnings

import numpy as np
import pytest
from scipy import optimize, stats

import tolerance
from vqathinker_jax.eval import correlation as M


def _cases():
  """(x, y) pairs: continuous, heavy ties in one or both, small and large n."""
  rng = np.random.default_rng(0)
  out = []
  for n in (3, 4, 7, 50, 513, 3000):
    out.append((rng.normal(size=n), rng.normal(size=n)))
    out.append((rng.integers(0, 5, n).astype(float), rng.normal(size=n).round(1)))
    x = rng.integers(0, 4, n).astype(float)
    out.append((x, x + rng.integers(0, 3, n)))                # ties in both, correlated
    out.append((rng.uniform(1, 5, n).round(2), -rng.uniform(0, 100, n).round(0)))
  return out


def assert_corr(got, want, name):
  tolerance.assert_close(got, want, tolerance.CORR_VS_SCIPY, scale=1.0, eps=tolerance.EPS64,
                         name=name)


@pytest.mark.parametrize("i", range(24))
def test_correlations_match_scipy(i):
  x, y = _cases()[i]
  assert_corr(M.spearman(x, y), stats.spearmanr(x, y).statistic, "srcc")
  assert_corr(M.kendall_tau_b(x, y), stats.kendalltau(x, y).statistic, "krcc")
  assert_corr(M.pearson(x, y), stats.pearsonr(x, y).statistic, "plcc")
  np.testing.assert_array_equal(M.rankdata(x), stats.rankdata(x))


def test_perfect_and_reversed_orders():
  x = np.arange(10.0)
  for f in (M.spearman, M.kendall_tau_b, M.pearson):
    assert f(x, 2 * x + 1) == 1.0
    assert f(x, -x) == -1.0


def _sse(p, x, y):
  return float(np.sum((M.logistic4(x, *p) - y) ** 2))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sign", (1, -1))
def test_logistic_fit_matches_curve_fit(seed, sign):
  rng = np.random.default_rng(seed)
  x = rng.uniform(1, 5, 400)
  y = sign * M.logistic4(x, 80, 20, 3.0, 0.5) + rng.normal(0, 5, 400)
  p = M.fit_logistic(x, y)
  q, _ = optimize.curve_fit(M.logistic4, x, y, p0=[y.max(), y.min(), x.mean(), 0.5],
                            maxfev=100_000)
  plcc_ours = stats.pearsonr(M.logistic4(x, *p), y).statistic
  plcc_ref = stats.pearsonr(M.logistic4(x, *q), y).statistic
  # Two optimisers stopping at their own convergence tests, not rounding: the same
  # minimum to the fits' tolerances (~1e-8 relative in the objective).
  assert abs(plcc_ours - plcc_ref) <= 1e-6
  assert _sse(p, x, y) <= _sse(q, x, y) * (1 + 1e-9)     # at least as good a minimum
  np.testing.assert_allclose(p, q, rtol=1e-4)


def test_logistic_fit_on_hard_shapes_is_finite_and_no_worse_than_linear():
  rng = np.random.default_rng(5)
  x = rng.uniform(1, 5, 300)
  for y in (2 * x + rng.normal(0, 0.3, 300),     # linear: the sigmoid must flatten out
            3 * x + 1,                           # exactly linear, unbounded optimum
            rng.normal(size=300)):               # no relation at all
    p = M.fit_logistic(x, y)
    assert p is not None and np.all(np.isfinite(p)) and p[3] > 0
    lin = np.polyval(np.polyfit(x, y, 1), x)
    # A logistic can approximate a line arbitrarily well; the fit must get close.
    assert _sse(p, x, y) <= float(np.sum((lin - y) ** 2)) * 1.01 + 1e-6


def test_evaluate_fields_against_scipy():
  rng = np.random.default_rng(1)
  mos = rng.uniform(1, 5, 200)
  pred = np.clip(mos + rng.normal(0, 0.6, 200), 1, 5).round(2)
  m = M.evaluate(pred, mos)
  assert m["n"] == m["n_total"] == 200 and m["n_nonfinite_pred"] == 0
  assert_corr(m["srcc"], stats.spearmanr(pred, mos).statistic, "srcc")
  assert_corr(m["krcc"], stats.kendalltau(pred, mos).statistic, "krcc")
  assert_corr(m["plcc"], stats.pearsonr(pred, mos).statistic, "plcc")
  tolerance.assert_close(m["rmse"], math.sqrt(np.mean((pred - mos) ** 2)),
                         tolerance.CORR_VS_SCIPY, eps=tolerance.EPS64, name="rmse")
  fitted = M.logistic4(pred, *m["logistic_params"])
  assert_corr(m["plcc_fitted"], stats.pearsonr(fitted, mos).statistic, "plcc fitted")
  tolerance.assert_close(m["rmse_fitted"], math.sqrt(np.mean((fitted - mos) ** 2)),
                         tolerance.CORR_VS_SCIPY, eps=tolerance.EPS64, name="rmse fitted")
  assert m["rmse_fitted"] <= m["rmse"] and m["plcc_fitted"] >= m["plcc"] - 1e-3


def test_evaluate_excludes_nonfinite_predictions():
  pred = [1.0, np.nan, 2.0, np.inf, 3.5, 4.0]
  mos = [1.1, 9.9, 2.5, 9.9, 3.0, 4.2]
  m = M.evaluate(pred, mos)
  ref = M.evaluate([1.0, 2.0, 3.5, 4.0], [1.1, 2.5, 3.0, 4.2])
  assert m["n"] == 4 and m["n_total"] == 6 and m["n_nonfinite_pred"] == 2
  assert m["n_distinct_pred"] == 4
  for k in ("srcc", "krcc", "plcc", "plcc_fitted", "rmse", "rmse_fitted"):
    assert m[k] == ref[k]


def test_evaluate_constant_predictions_give_nan_without_warnings():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    m = M.evaluate([3.0] * 5, [1, 2, 3, 4, 5])
    m2 = M.evaluate([1, 2, 3, 4], [2.0] * 4)
  for r in (m, m2):
    for k in ("srcc", "krcc", "plcc", "plcc_fitted", "rmse_fitted"):
      assert math.isnan(r[k]), k
    assert r["logistic_params"] is None
  assert m["n_distinct_pred"] == 1 and m2["n_distinct_pred"] == 4
  tolerance.assert_close(m["rmse"], math.sqrt(2.0), tolerance.CORR_VS_SCIPY, eps=tolerance.EPS64,
                         name="rmse")


def test_evaluate_errors():
  with pytest.raises(ValueError, match="at least 3"):
    M.evaluate([1.0, 2.0], [1.0, 2.0])
  with pytest.raises(ValueError, match="at least 3.*2 non-finite"):
    M.evaluate([1.0, np.nan, 2.0, np.nan], [1.0, 2.0, 3.0, 4.0])
  with pytest.raises(ValueError, match="pred has 3 values but mos has 4"):
    M.evaluate([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
  with pytest.raises(ValueError, match="non-finite"):
    M.evaluate([1.0, 2.0, 3.0], [1.0, np.nan, 3.0])


def test_kendall_is_fast_at_eval_scale():
  import time
  rng = np.random.default_rng(2)
  x, y = rng.uniform(1, 5, 7182).round(2), rng.uniform(0, 100, 7182).round(1)
  t = time.perf_counter()
  tau = M.kendall_tau_b(x, y)
  assert time.perf_counter() - t < 2.0                  # O(n log n), not O(n^2) in Python
  assert_corr(tau, stats.kendalltau(x, y).statistic, "krcc")
