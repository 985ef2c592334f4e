"""Synthetic quality set: deterministic, fast, MOS monotone in every distortion."""

import filecmp
import json
import os
import time

import numpy as np
import pytest

from data_pipelines import decode
from data_pipelines import synthetic


def test_generate_is_deterministic_fast_and_in_the_reference_layout(tmp_path):
  start = time.perf_counter()
  labels_a, videos_a = synthetic.generate(str(tmp_path / "a"), num_videos=12, seed=5)
  elapsed = time.perf_counter() - start
  labels_b, videos_b = synthetic.generate(str(tmp_path / "b"), num_videos=12, seed=5)
  labels_c, _ = synthetic.generate(str(tmp_path / "c"), num_videos=12, seed=6)
  assert elapsed < 10  # 48 clips (the default) stay well under a minute on 2 cores
  with open(labels_a) as f:
    rows = json.load(f)["annotations"]
  assert [r["image_id"] for r in rows] == sorted(os.listdir(videos_a))
  assert all(1.0 <= float(r["score"]) <= 5.0 and len(r["score"].split(".")[1]) == 2 for r in rows)
  assert open(labels_a).read() == open(labels_b).read() != open(labels_c).read()
  match, mismatch, errors = filecmp.cmpfiles(videos_a, videos_b, os.listdir(videos_a),
                                             shallow=False)
  assert len(match) == 12 and not mismatch and not errors  # bit-identical videos
  d = decode.decode(os.path.join(videos_a, rows[0]["image_id"]), 6, 32)
  assert d.num_frames == 24 and (d.height, d.width) == (64, 96)


def test_mos_formula_is_monotone_in_every_distortion_with_small_rater_noise():
  clean = dict.fromkeys(synthetic.WEIGHTS, 0)
  assert synthetic.mos(clean) == 5.0
  for name in synthetic.WEIGHTS:
    scores = [synthetic.mos(dict(clean, **{name: level})) for level in range(synthetic.LEVELS)]
    assert all(a > b for a, b in zip(scores, scores[1:])), name
  worst = synthetic.mos(dict.fromkeys(synthetic.WEIGHTS, synthetic.LEVELS - 1))
  assert 1.0 <= worst < 1.05
  levels = dict(clean, blur=2, stutter=1)
  rng = np.random.default_rng(0)
  noisy = np.array([synthetic.mos(levels, rng) for _ in range(2000)])
  assert abs(noisy.mean() - synthetic.mos(levels)) < 0.01
  # 2,000 draws: the std's standard error is ~1.6 %, so 10 % is 6 of them.
  assert noisy.std() == pytest.approx(synthetic.RATER_NOISE, rel=0.1)


def test_drawn_levels_spread_the_scores(tmp_path):
  rng = np.random.default_rng(0)
  draws = [synthetic.draw_levels(rng) for _ in range(500)]
  active = [sum(v > 0 for v in d.values()) for d in draws]
  assert set(active) == set(range(synthetic.MAX_ACTIVE + 1))
  scores = np.array([synthetic.mos(d) for d in draws])
  assert scores.min() < 2.0 and scores.max() == 5.0 and 2.5 < np.median(scores) < 4.0


def test_distortions_change_the_pixels_as_graded():
  rng = np.random.default_rng(0)
  clean = dict.fromkeys(synthetic.WEIGHTS, 0)
  frames = synthetic.render(np.arange(4.0), 32, 48, rng)
  base = synthetic.distort(frames, clean, np.random.default_rng(1)).astype(float)
  def diff(**levels):
    return np.abs(synthetic.distort(frames, dict(clean, **levels), np.random.default_rng(1))
                  - base).mean()
  for name in ("blur", "noise", "exposure", "colour_cast"):
    d = [diff(**{name: level}) for level in range(synthetic.LEVELS)]
    assert d[0] == 0 and all(a < b for a, b in zip(d, d[1:])), (name, d)
  held = synthetic.timeline(dict(clean, stutter=3), 24, np.random.default_rng(2))
  skipped = synthetic.timeline(dict(clean, frame_drop=3), 24, np.random.default_rng(2))
  assert (np.diff(held) == 0).sum() == 9 and (np.diff(skipped) == 3).sum() >= 8


def test_exposure_direction_fixed_or_drawn_and_nothing_else_moves():
  clean = dict.fromkeys(synthetic.WEIGHTS, 0)
  frames = synthetic.render(np.arange(2.0), 32, 48, np.random.default_rng(0))
  levels = dict(clean, exposure=2, noise=1, colour_cast=1)
  def mean(exposure, seed):
    return synthetic.distort(frames, levels, np.random.default_rng(seed), exposure).mean()
  base = synthetic.distort(frames, clean, np.random.default_rng(0)).mean()
  drawn = [mean("both", s) for s in range(20)]
  assert min(drawn) < base < max(drawn)  # both directions occur
  assert all(mean("under", s) < base < mean("over", s) for s in range(20))
  # A fixed direction only flips the gain's sign: each clip's draws after it (the colour
  # cast) are the ones the drawn direction would give, so `both` makes the same clips.
  for s in range(20):
    same = mean("under" if drawn[s] < base else "over", s)
    assert same == drawn[s]
  with pytest.raises(ValueError, match="exposure must be one of"):
    synthetic.generate("/nonexistent", num_videos=1, exposure="dark")


def test_distortion_subset_and_shared_scenes(tmp_path):
  kinds = ("noise", "blur")
  labels, videos = synthetic.generate(str(tmp_path / "s"), num_videos=8, seed=3, num_frames=8,
                                      distortions=kinds, scenes=2)
  levels = json.load(open(os.path.join(tmp_path, "s", "distortions.json")))
  assert all(v == 0 for lv in levels.values() for k, v in lv.items() if k not in kinds)
  assert any(v > 0 for lv in levels.values() for v in lv.values())
  clean = [v for v, lv in levels.items() if not any(lv.values())]
  # Clips i and i + 2 show the same scene: two undistorted ones decode alike, and the
  # default (every clip its own scene) still gives the clips of the full generator.
  frames = {v: decode.decode(os.path.join(videos, v), 4, 32).frames_TxHxWx3.astype(float)
            for v in levels}
  same = [(a, b) for a in clean for b in clean
          if a < b and (int(a[10:15]) - int(b[10:15])) % 2 == 0]
  assert same, "seed 3 should give two clean clips of one scene"
  for a, b in same:
    assert np.abs(frames[a] - frames[b]).mean() < 2.0
    assert synthetic.scene_of(a, 2) == synthetic.scene_of(b, 2)
  with pytest.raises(ValueError, match="not a synthetic clip"):
    synthetic.scene_of("konvid_0001.mp4", 2)
  assert synthetic.draw_levels(np.random.default_rng(0)) == synthetic.draw_levels(
      np.random.default_rng(0), tuple(synthetic.WEIGHTS))
  with pytest.raises(ValueError, match="sharpness"):
    synthetic.generate(str(tmp_path / "x"), num_videos=1, distortions=("sharpness",))


def test_strengths_hold_levels_out_and_the_default_stream_is_unchanged():
  draws = [synthetic.draw_levels(np.random.default_rng(i), strengths=(3,)) for i in range(200)]
  assert {v for d in draws for v in d.values()} == {0, 3}
  low = [synthetic.draw_levels(np.random.default_rng(i), strengths=(1, 2)) for i in range(200)]
  assert {v for d in low for v in d.values()} == {0, 1, 2}

  # The default draws what `rng.integers(1, 4)` per active kind drew before `strengths`
  # existed, so the demo's clips did not change.
  def before(rng):
    names = list(synthetic.WEIGHTS)
    active = rng.choice(len(names), int(rng.integers(synthetic.MAX_ACTIVE + 1)), replace=False)
    levels = dict.fromkeys(names, 0)
    for i in active:
      levels[names[i]] = int(rng.integers(1, synthetic.LEVELS))
    return levels

  assert all(synthetic.draw_levels(np.random.default_rng(i)) == before(np.random.default_rng(i))
             for i in range(200))
  with pytest.raises(ValueError, match="strengths"):
    synthetic.generate("/nonexistent", num_videos=1, strengths=(4,))
