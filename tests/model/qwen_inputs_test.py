"""Qwen2.5-VL video inputs: `patchify_video` against transformers' own
`Qwen2VLVideoProcessor.patchify` (imported beside a stand-in torchvision, which its module
imports but `patchify` never uses), against the spec's permutation restated in numpy and
element by element, and with `normalize` against the image processor's full path;
`smart_resize` against the spec's worked examples, a restatement of qwen-vl-utils over
random sizes and transformers' copy (equal except where their clamps differ)."""

import importlib
import math
import sys
import types

import jax
import numpy as np
import pytest

import tolerance
from vqathinker_jax.model import qwen_inputs as qi

SIZES = [(2, 28, 28), (4, 56, 84), (3, 112, 56), (5, 84, 140)]  # (T, H, W); odd T padded


def hf_video_patchify():
  """transformers' `Qwen2VLVideoProcessor.patchify` (torch only). Its module imports
  torchvision, which does not import beside this torch: a stand-in fills `sys.modules`
  only while it imports, after transformers has cached that torchvision is absent (else
  its availability checks would meet a module without a spec in later tests)."""
  from transformers import video_processing_utils, video_utils  # noqa: F401 (import them first)
  from transformers.utils import import_utils
  import_utils.is_torchvision_available()
  import_utils.is_torchvision_v2_available()
  name = "transformers.models.qwen2_vl.video_processing_qwen2_vl"
  chain = ["torchvision", "torchvision.transforms", "torchvision.transforms.v2",
           "torchvision.transforms.v2.functional"]
  stubs = {}
  try:
    importlib.import_module(chain[-1])
  except Exception:  # ImportError, or RuntimeError from a mismatched build
    for n in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[n]
    stubs = {n: types.ModuleType(n) for n in chain}
    for parent, child in zip(chain, chain[1:]):
      setattr(stubs[parent], child.rsplit(".", 1)[1], stubs[child])
    sys.modules.update(stubs)
  try:
    return importlib.import_module(name).Qwen2VLVideoProcessor.patchify
  except Exception as e:
    pytest.skip(f"transformers' video processor does not import here: {e!r}")
  finally:
    for n in stubs:
      sys.modules.pop(n, None)
    if stubs:  # its tvF is the stand-in: leave no half-usable module behind
      sys.modules.pop(name, None)
      pkg = sys.modules.get("transformers.models.qwen2_vl")
      if pkg is not None and "video_processing_qwen2_vl" in vars(pkg):
        delattr(pkg, "video_processing_qwen2_vl")


def frames(T, H, W, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize("T, H, W", SIZES)
def test_patchify_matches_transformers_video_processor(T, H, W):
  import torch
  patchify = hf_video_patchify()
  x_THWC = np.asarray(qi.normalize(frames(T, H, W)))
  want, gt, gh, gw = patchify(None, torch.tensor(x_THWC.transpose(0, 3, 1, 2))[None],
                              patch_size=14, merge_size=2, temporal_patch_size=2)
  got, grid = qi.patchify_video(x_THWC)
  assert grid == (gt, gh, gw) == ((T + 1) // 2, H // 14, W // 14)
  np.testing.assert_array_equal(np.asarray(got), want[0].numpy())  # a permutation: exact
  got_cf, grid_cf = qi.patchify_video(x_THWC.transpose(0, 3, 1, 2), channels_last=False)
  assert grid_cf == grid
  np.testing.assert_array_equal(np.asarray(got_cf), np.asarray(got))


@pytest.mark.parametrize("T, H, W", SIZES)
def test_patchify_matches_spec_permutation_and_layout(T, H, W):
  x = np.asarray(qi.normalize(frames(T, H, W, seed=1)))
  got = np.asarray(qi.patchify_video(x)[0])
  # Spec §4.4, from (T, C, H, W), the last frame repeated to an even count.
  y = x.transpose(0, 3, 1, 2)
  y = np.concatenate([y, y[-1:]]) if T % 2 else y
  gt, C, gh, gw = y.shape[0] // 2, 3, H // 14, W // 14
  spec = y.reshape(gt, 2, C, gh // 2, 2, 14, gw // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  np.testing.assert_array_equal(got, spec.reshape(gt * gh * gw, C * 2 * 14 * 14))
  # One element at a time: row (t, bh, bw, mh, mw), column (c, tp, ph, pw).
  rng = np.random.default_rng(2)
  for _ in range(300):
    t, bh, bw, mh, mw, c, tp, ph, pw = (int(rng.integers(n)) for n in
                                        (gt, gh // 2, gw // 2, 2, 2, C, 2, 14, 14))
    row = (((t * (gh // 2) + bh) * (gw // 2) + bw) * 2 + mh) * 2 + mw
    col = ((c * 2 + tp) * 14 + ph) * 14 + pw
    frame = min(2 * t + tp, T - 1)  # the padded frame is the last one
    assert got[row, col] == x[frame, (2 * bh + mh) * 14 + ph, (2 * bw + mw) * 14 + pw, c]


def test_normalize_and_patchify_match_transformers_image_processor():
  """An image is a frame pair of the same frame: the image processor's full path
  (rescale, CLIP normalize, patchify with the frame tiled along t) with resize off."""
  from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import \
      Qwen2VLImageProcessorPil
  assert qi.CLIP_MEAN == tuple(OPENAI_CLIP_MEAN) and qi.CLIP_STD == tuple(OPENAI_CLIP_STD)
  f = frames(1, 84, 112, seed=3)
  out = Qwen2VLImageProcessorPil()(images=[f[0]], do_resize=False, return_tensors="np")
  got, grid = qi.patchify_video(qi.normalize(np.concatenate([f, f])))
  np.testing.assert_array_equal(out["image_grid_thw"], [grid])
  want = np.asarray(out["pixel_values"])
  # They rescale then normalise; we fold the rescale into the statistics (as the video
  # processor): the same value, rounded differently.
  tolerance.assert_close(np.asarray(got), want, 4, name="pixel values vs image processor")


def test_normalize_is_the_video_processors_fused_form():
  f = frames(3, 28, 56, seed=4)
  got = np.asarray(qi.normalize(f))
  mean = np.float32(255.0) * np.asarray(qi.CLIP_MEAN, np.float32)
  std = np.float32(255.0) * np.asarray(qi.CLIP_STD, np.float32)
  fused = (f.astype(np.float32) - mean) / std
  # XLA:CPU divides by a reciprocal multiply: one more rounding, relative to each value.
  tolerance.assert_close(got, fused, 2, scale=np.abs(fused), name="vs fused float32")
  plain = (f / 255.0 - np.asarray(qi.CLIP_MEAN)) / np.asarray(qi.CLIP_STD)
  tolerance.assert_close(got, plain, 4, name="vs (x/255 - mean)/std in float64")
  got_cf = np.asarray(qi.normalize(f.transpose(0, 3, 1, 2), channels_last=False))
  np.testing.assert_array_equal(got_cf, got.transpose(0, 3, 1, 2))


def test_patchify_jits_and_counts_tokens():
  f = frames(8, 112, 168, seed=5)
  step = jax.jit(lambda x: qi.patchify_video(qi.normalize(x))[0])
  px = step(f)
  np.testing.assert_array_equal(np.asarray(px), np.asarray(qi.patchify_video(qi.normalize(f))[0]))
  # Spec §4.4: 8 frames at 112x168 -> grid (4, 8, 12), 96 merged tokens.
  assert qi.patchify_video(f)[1] == (4, 8, 12) and px.shape == (4 * 8 * 12, 1176)
  assert np.prod(qi.patchify_video(f)[1]) // 4 == 96
  with pytest.raises(ValueError, match="multiples of 28"):
    qi.patchify_video(frames(2, 28, 42))


# ---- sizes ------------------------------------------------------------------------------

def restated_smart_resize(h, w, factor, min_pixels, max_pixels):
  """qwen-vl-utils 0.0.14's smart_resize with its helpers, as spec §4.2 states them."""
  round_by = lambda n: round(n / factor) * factor
  ceil_by = lambda n: math.ceil(n / factor) * factor
  floor_by = lambda n: math.floor(n / factor) * factor
  hb, wb = max(factor, round_by(h)), max(factor, round_by(w))
  if hb * wb > max_pixels:
    beta = math.sqrt(h * w / max_pixels)
    hb, wb = floor_by(h / beta), floor_by(w / beta)
  elif hb * wb < min_pixels:
    beta = math.sqrt(min_pixels / (h * w))
    hb, wb = ceil_by(h * beta), ceil_by(w * beta)
  return hb, wb


def test_smart_resize_worked_examples():
  """Spec §4.2 / §4.1 (qwen-vl-utils 0.0.14, VERIFIED-RUN there)."""
  b20, b16 = qi.video_resize_bounds(20), qi.video_resize_bounds(16)
  assert b20 == b16 == (100352, 602112)
  assert qi.smart_resize(360, 640, min_pixels=b20[0], max_pixels=b20[1]) == (364, 644)
  assert qi.smart_resize(1080, 1920, min_pixels=b16[0], max_pixels=b16[1]) == (560, 1008)
  assert qi.smart_resize(224, 224, min_pixels=b20[0], max_pixels=b20[1]) == (336, 336)
  # Frame-list input: 0.0.14 resizes with factor 56; the factor-28 pass keeps the size.
  assert qi.smart_resize(300, 500, factor=56, min_pixels=3136,
                         max_pixels=360 * 420) == (280, 504)
  assert qi.smart_resize(280, 504, min_pixels=b20[0], max_pixels=b20[1]) == (280, 504)
  # Long videos share the total budget; a caller's max_pixels only lowers it.
  assert qi.video_resize_bounds(768) == (100352, 235200.0)
  assert qi.video_resize_bounds(20, max_pixels=360 * 420) == (100352, 151200)
  assert qi.video_resize_bounds(20, max_pixels=10 ** 7) == (100352, 602112)


def test_smart_resize_random_sizes():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf
  rng = np.random.default_rng(0)
  for _ in range(3000):
    h, w = (int(v) for v in rng.integers(28, 4000, 2))
    if max(h, w) / min(h, w) > 200:
      continue
    lo, hi = (qi.video_resize_bounds(int(rng.integers(2, 769))) if rng.random() < 0.7
              else (3136, 12845056))
    want = restated_smart_resize(h, w, 28, lo, hi)
    if 0 in want:  # rare; see test_smart_resize_clamps_differ_from_transformers
      continue
    got = qi.smart_resize(h, w, min_pixels=lo, max_pixels=hi)
    assert got == want == hf(h, w, factor=28, min_pixels=lo, max_pixels=hi), (h, w, lo, hi)
    assert got[0] % 28 == got[1] % 28 == 0


def test_smart_resize_clamps_differ_from_transformers():
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf
  # A side under 14 px: qwen-vl-utils clamps the rounding to 28 and stops; transformers
  # rounds it to 0 and so takes the min-pixels branch.
  assert qi.smart_resize(10, 1010, min_pixels=3136, max_pixels=12845056) == (28, 1008)
  assert hf(10, 1010, factor=28, min_pixels=3136, max_pixels=12845056) == (28, 588)
  # Shrinking a 1:200 strip floors its short side to 0: qwen-vl-utils keeps the 0 (and
  # fails later), transformers clamps to 28; we raise.
  assert restated_smart_resize(28, 5600, 28, 100352, 105369)[0] == 0
  assert hf(28, 5600, factor=28, min_pixels=100352, max_pixels=105369)[0] == 28
  with pytest.raises(ValueError, match="shrinks"):
    qi.smart_resize(28, 5600, min_pixels=100352, max_pixels=105369)
  with pytest.raises(ValueError, match="aspect ratio"):
    qi.smart_resize(28, 5656, min_pixels=100352, max_pixels=602112)


def test_frame_count_and_seconds_per_grid():
  """Spec §4.1's table: (total frames, video fps, sampling fps) -> frames, s per grid."""
  for total, vfps, fps, n, s in [(300, 30, 2, 20, 1.0), (300, 30, 1, 10, 2.0),
                                 (36000, 30, 2, 768, 3.125), (301, 29.97, 2, 20, 1.0043)]:
    assert qi.smart_nframes(total, vfps, fps=fps) == n
    assert qi.second_per_grid_t(n / total * vfps) == pytest.approx(s, abs=5e-5)
  assert qi.smart_nframes(3, 30.0) == 2  # fewer frames than min_frames: the video's, even
  with pytest.raises(ValueError):
    qi.smart_nframes(1, 30.0)
