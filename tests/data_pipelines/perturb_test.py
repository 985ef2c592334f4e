"""Temporal perturbations: each mode's defining property, uniform mode draws, device gather."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from data_pipelines import perturb

import collections
import itertools
import math

DRAWS = 300
LENGTHS = (1, 2, 5, 6, 12)


def _draws(mode, t, seed=0):
  rng = np.random.default_rng(seed)
  return [perturb.indices(mode, t, rng) for _ in range(DRAWS)]


@pytest.mark.parametrize("t", LENGTHS)
def test_shuffle_is_a_permutation_and_not_always_identity(t):
  draws = _draws("shuffle", t)
  for idx, blank in draws:
    assert sorted(idx) == list(range(t)) and not blank.any()
  if t > 1:
    assert any(list(idx) != list(range(t)) for idx, _ in draws)


@pytest.mark.parametrize("t", LENGTHS)
def test_local_shuffle_stays_inside_windows_of_four(t):
  for idx, blank in _draws("local_shuffle", t):
    assert sorted(idx) == list(range(t)) and not blank.any()
    assert np.array_equal(idx // perturb.LOCAL_WINDOW, np.arange(t) // perturb.LOCAL_WINDOW)


@pytest.mark.parametrize("t", LENGTHS)
def test_reverse_reverses(t):
  for idx, blank in _draws("reverse", t)[:3]:
    assert list(idx) == list(range(t))[::-1] and not blank.any()


@pytest.mark.parametrize("t", LENGTHS)
def test_jitter_moves_each_frame_by_at_most_one(t):
  moved = 0
  for idx, blank in _draws("jitter", t):
    assert np.abs(idx - np.arange(t)).max() <= 1 and not blank.any()
    assert idx.min() >= 0 and idx.max() <= t - 1
    moved += np.any(idx != np.arange(t))
  assert t == 1 or moved > DRAWS // 2


@pytest.mark.parametrize("t", [2, 5, 6, 12])
def test_duplicate_keeps_length_and_repeats_one_frame(t):
  counts_seen = set()
  for idx, blank in _draws("duplicate", t):
    assert idx.shape == (t,) and not blank.any()
    values, counts = np.unique(idx, return_counts=True)
    n = counts.max() - 1  # copies beyond the first (the original d may have been dropped)
    assert 0 <= n <= min(3, t - 1) and (counts > 1).sum() <= 1, idx
    counts_seen.add(int(n))
  assert counts_seen == set(range(min(3, t - 1) + 1))


@pytest.mark.parametrize("t", LENGTHS)
def test_random_drop_blanks_one_to_three_frames(t):
  blanked = set()
  for idx, blank in _draws("random_drop", t):
    assert list(idx) == list(range(t))
    assert 1 <= blank.sum() <= min(3, t)
    blanked.add(int(blank.sum()))
  assert blanked == set(range(1, min(3, t) + 1))


def test_unknown_mode_is_named():
  with pytest.raises(ValueError, match="'rotate'"):
    perturb.indices("rotate", 6, np.random.default_rng(0))


def test_modes_are_drawn_uniformly():
  rng = np.random.default_rng(7)
  mode_G, idx_GxT, blank_GxT = perturb.sample(rng, 6000, 6)
  assert idx_GxT.shape == blank_GxT.shape == (6000, 6) and idx_GxT.dtype == np.int32
  counts = np.bincount(mode_G, minlength=len(perturb.MODES))
  assert stats.chisquare(counts).pvalue > 1e-3, counts
  # The maps follow their modes: reverse rows are reversed, only random_drop blanks.
  reverse = mode_G == perturb.MODES.index("reverse")
  assert (idx_GxT[reverse] == np.arange(6)[::-1]).all()
  assert (blank_GxT.any(1) == (mode_G == perturb.MODES.index("random_drop"))).all()


def test_sample_is_deterministic_in_the_generator():
  a = perturb.sample(np.random.default_rng(3), 4, 6)
  b = perturb.sample(np.random.default_rng(3), 4, 6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_apply_perturbations_gathers_and_blanks():
  rng = np.random.default_rng(0)
  b, g, t = 2, 3, 6
  frames_BTHWC = rng.integers(0, 255, (b, t, 4, 5, 3)).astype(np.uint8)
  idx_BGT = rng.integers(0, t, (b, g, t)).astype(np.int32)
  blank_BGT = rng.random((b, g, t)) < 0.3
  out = np.asarray(perturb.apply_perturbations(jnp.asarray(frames_BTHWC), idx_BGT, blank_BGT))
  assert out.shape == (b, g, t, 4, 5, 3) and out.dtype == np.uint8
  for i in range(b):
    for j in range(g):
      for k in range(t):
        want = (np.broadcast_to(perturb.REFERENCE_BLANK_UINT8, (4, 5, 3)) if blank_BGT[i, j, k]
                else frames_BTHWC[i, idx_BGT[i, j, k]])
        np.testing.assert_array_equal(out[i, j, k], want)


def test_blank_value_defaults_to_zero_for_normalised_frames_and_is_configurable():
  frames_BTHWC = jnp.ones((1, 3, 2, 2, 3), jnp.float32)
  idx_BGT = jnp.zeros((1, 1, 3), jnp.int32)
  blank_BGT = jnp.array([[[True, False, False]]])
  out = perturb.apply_perturbations(frames_BTHWC, idx_BGT, blank_BGT)
  assert float(out[0, 0, 0].max()) == 0.0 and float(out[0, 0, 1].min()) == 1.0
  out = perturb.apply_perturbations(frames_BTHWC, idx_BGT, blank_BGT, blank_value=-2.5)
  assert float(out[0, 0, 0].max()) == -2.5
  # The reference's grey in uint8 maps to ~0 after ImageNet normalisation.
  mean = np.array(perturb.IMAGENET_MEAN_RGB)
  assert np.abs(np.array(perturb.REFERENCE_BLANK_UINT8) / 255 - mean).max() < 0.5 / 255


# --- The reference's distributions, enumerated exactly ---------------------------------
# Each function restates a mode as the reference release draws it (SPEC §3) and yields
# every outcome (idx tuple, blank tuple) with its probability.

def _reference_outcomes(mode, t):
  frames = list(range(t))
  none = (False,) * t
  if mode == "shuffle":
    perms = list(itertools.permutations(frames))
    yield from ((p, none, 1 / len(perms)) for p in perms)
  elif mode == "local_shuffle":
    windows = [list(itertools.permutations(frames[i:i + 4])) for i in range(0, t, 4)]
    total = math.prod(len(w) for w in windows)
    for parts in itertools.product(*windows):
      yield sum(parts, ()), none, 1 / total
  elif mode == "reverse":
    yield tuple(frames[::-1]), none, 1.0
  elif mode == "jitter":
    for delta in itertools.product((-1, 0, 1), repeat=t):
      yield tuple(min(max(i + d, 0), t - 1) for i, d in zip(frames, delta)), none, 3.0 ** -t
  elif mode == "duplicate":
    # Frame d, n in [1, min(3, t-1)], n copies of d inserted before position `pos` of the
    # t + 1 possible, then n positions dropped among all but the inserted copies.
    ns = range(1, min(3, t - 1) + 1)
    for d, n, pos in itertools.product(frames, ns, range(t + 1)):
      longer = frames[:pos] + [d] * n + frames[pos:]
      droppable = [i for i in range(len(longer)) if not pos <= i < pos + n]
      subsets = list(itertools.combinations(droppable, n))
      for drop in subsets:
        out = tuple(x for i, x in enumerate(longer) if i not in drop)
        yield out, none, 1 / (t * len(ns) * (t + 1) * len(subsets))
  elif mode == "random_drop":
    ns = range(1, min(3, t) + 1)
    for n in ns:
      subsets = list(itertools.combinations(frames, n))
      for drop in subsets:
        yield tuple(frames), tuple(i in drop for i in frames), 1 / (len(ns) * len(subsets))


def _reference_distribution(mode, t):
  dist = collections.defaultdict(float)
  for idx, blank, p in _reference_outcomes(mode, t):
    dist[idx, blank] += p
  return dist


def test_duplicate_reference_is_mostly_out_of_order_at_six_frames():
  dist = _reference_distribution("duplicate", 6)
  unordered = sum(p for (idx, _), p in dist.items() if list(idx) != sorted(idx))
  assert abs(sum(dist.values()) - 1) < 1e-12 and 0.60 < unordered < 0.64, unordered


@pytest.mark.parametrize("t", [3, 6])
@pytest.mark.parametrize("mode", perturb.MODES)
def test_each_mode_draws_the_reference_distribution(mode, t):
  """Goodness of fit of our draws to the exact reference distribution (chi-square, outcomes
  with expected count < 5 pooled into one cell)."""
  dist = _reference_distribution(mode, t)
  draws = 30_000
  rng = np.random.default_rng([11, t, perturb.MODES.index(mode)])
  seen = collections.Counter()
  for _ in range(draws):
    idx, blank = perturb.indices(mode, t, rng)
    key = (tuple(int(i) for i in idx), tuple(bool(b) for b in blank))
    assert key in dist, f"{mode}: {key} cannot come from the reference"
    seen[key] += 1
  if len(dist) == 1:
    return
  keys = sorted(dist, key=dist.get, reverse=True)
  big = [k for k in keys if dist[k] * draws >= 5]
  small = [k for k in keys if dist[k] * draws < 5]
  observed = [seen[k] for k in big] + ([sum(seen[k] for k in small)] if small else [])
  expected = [dist[k] * draws for k in big] + ([sum(dist[k] for k in small) * draws]
                                               if small else [])
  assert stats.chisquare(observed, expected).pvalue > 1e-3
