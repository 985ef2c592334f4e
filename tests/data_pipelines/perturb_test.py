"""Temporal perturbations: each mode's defining property, uniform mode draws, device gather."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from data_pipelines import perturb

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
    assert np.all(np.diff(idx) >= 0), "order of the kept frames is preserved"
    values, counts = np.unique(idx, return_counts=True)
    repeated = values[counts > 1]
    assert len(repeated) == 1, idx
    n = counts.max() - 1  # copies inserted (= other frames deleted)
    assert 1 <= n <= min(3, t - 1)
    counts_seen.add(int(n))
  assert counts_seen == set(range(1, min(3, t - 1) + 1))


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
