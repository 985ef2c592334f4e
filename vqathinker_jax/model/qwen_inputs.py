"""Qwen2.5-VL video inputs: frame count, resize target, normalisation and patchify into
the processor's ``pixel_values_videos`` [P, C·2·14·14] with its ``video_grid_thw``.

The sizes (`smart_nframes`, `video_resize_bounds`, `smart_resize`) are qwen-vl-utils
0.0.14's, on the host; `normalize` and `patchify_video` are jnp, so they can run on device
inside a jitted input step (all shapes static), as transformers' Qwen2-VL video processor.
Legend: T frames, H/W pixels, C channels, P patches (= gt·gh·gw), K = C·tp·p·p patch width;
gt/gh/gw the grid in patch units, tp the temporal patch, p the patch side, m the merge.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, Qwen2-VL's processor defaults.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FACTOR = 28                       # patch 14 x merge 2: sides are multiples of this
VIDEO_MIN_PIXELS = 128 * 28 * 28  # per frame
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = 128000 * 28 * 28 * 0.9  # MODEL_SEQ_LEN (128000) tokens, 90% for video
MAX_RATIO = 200


def smart_nframes(total_frames: int, video_fps: float, *, fps: float = 2.0, min_frames: int = 4,
                  max_frames: int = 768) -> int:
  """Frames to sample (even): ``fps`` per second of video, clamped to [min_frames,
  max_frames] and to the video, rounded down to even (qwen-vl-utils 0.0.14)."""
  lo = math.ceil(min_frames / 2) * 2
  hi = math.floor(min(max_frames, total_frames) / 2) * 2
  n = min(max(total_frames / video_fps * fps, lo), hi, total_frames)
  n = math.floor(n / 2) * 2
  if not 2 <= n <= total_frames:
    raise ValueError(f"nframes {n} must lie in [2, {total_frames}]")
  return n


def second_per_grid_t(sample_fps: float, temporal_patch_size: int = 2) -> float:
  """Seconds covered by one temporal grid (``second_per_grid_ts``): tp / sample_fps, with
  sample_fps = nframes / total_frames · video_fps. Compute it here: transformers 5.x's
  processor takes it from `video_metadata` and otherwise assumes 24 fps (spec §0.3)."""
  return temporal_patch_size / sample_fps


def video_resize_bounds(nframes: int, *, min_pixels: int = VIDEO_MIN_PIXELS,
                        max_pixels: float | None = None,
                        total_pixels: float = VIDEO_TOTAL_PIXELS) -> tuple[int, float]:
  """(min_pixels, max_pixels) per frame for `smart_resize`: the per-video token budget
  shared by the frames, within [1.05·min_pixels, VIDEO_MAX_PIXELS]; a caller's
  ``max_pixels`` can only lower it (qwen-vl-utils 0.0.14)."""
  budget = max(min(VIDEO_MAX_PIXELS, total_pixels / nframes * 2), int(min_pixels * 1.05))
  return min_pixels, budget if max_pixels is None else min(max_pixels, budget)


def smart_resize(h: int, w: int, *, factor: int = FACTOR, min_pixels: float,
                 max_pixels: float) -> tuple[int, int]:
  """(h', w'), multiples of ``factor`` nearest to (h, w) with h'·w' in [min, max] pixels,
  aspect kept: qwen-vl-utils' rule (its lower clamp to ``factor`` is on the first rounding;
  transformers' copy puts it on the shrink branch instead). Python's round: half to even."""
  if max(h, w) / min(h, w) > MAX_RATIO:
    raise ValueError(f"aspect ratio {max(h, w) / min(h, w)} exceeds {MAX_RATIO}")
  hb = max(factor, round(h / factor) * factor)
  wb = max(factor, round(w / factor) * factor)
  if hb * wb > max_pixels:
    beta = math.sqrt(h * w / max_pixels)
    hb = math.floor(h / beta / factor) * factor
    wb = math.floor(w / beta / factor) * factor
  elif hb * wb < min_pixels:
    beta = math.sqrt(min_pixels / (h * w))
    hb = math.ceil(h * beta / factor) * factor
    wb = math.ceil(w * beta / factor) * factor
  if not hb or not wb:  # qwen-vl-utils would go on with a 0 side (transformers clamps to 28)
    raise ValueError(f"{h}x{w} shrinks to {hb}x{wb} under max_pixels {max_pixels}")
  return hb, wb


def normalize(frames_uint8: jax.Array, *, channels_last: bool = True,
              mean=CLIP_MEAN, std=CLIP_STD) -> jax.Array:
  """float32 (x/255 - mean)/std per channel, computed as transformers' video processor does
  (rescale fused into the statistics: (x - 255·mean)/(255·std), in float32; XLA:CPU's
  division may round once more)."""
  shape = (-1,) if channels_last else (-1, 1, 1)
  mean = jnp.asarray(mean, jnp.float32).reshape(shape) * jnp.float32(255.0)
  std = jnp.asarray(std, jnp.float32).reshape(shape) * jnp.float32(255.0)
  return (jnp.asarray(frames_uint8).astype(jnp.float32) - mean) / std


def patchify_video(frames: jax.Array, *, channels_last: bool = True, patch_size: int = 14,
                   temporal_patch_size: int = 2,
                   merge_size: int = 2) -> tuple[jax.Array, tuple[int, int, int]]:
  """``pixel_values_videos`` [P, K] and ``grid_thw`` (gt, gh, gw) of resized, normalised
  frames [T, H, W, C] (or [T, C, H, W] with ``channels_last=False``).

  Rows in (gt, gh/m, gw/m, m, m) order, so every m² consecutive rows are one merged token;
  columns in (C, tp, p, p) order, the Conv3d kernel's. An odd frame count is padded by
  repeating the last frame, as the processor does.
  """
  x_THWC = jnp.asarray(frames)
  if not channels_last:
    x_THWC = jnp.moveaxis(x_THWC, 1, -1)
  T, H, W, C = x_THWC.shape
  p, tp, m = patch_size, temporal_patch_size, merge_size
  if H % (p * m) or W % (p * m):
    raise ValueError(f"frames {H}x{W} are not multiples of {p * m} (smart_resize first)")
  if pad := -T % tp:
    x_THWC = jnp.concatenate([x_THWC, jnp.repeat(x_THWC[-1:], pad, axis=0)], axis=0)
  gt, gh, gw = (T + pad) // tp, H // p, W // p
  x = x_THWC.reshape(gt, tp, gh // m, m, p, gw // m, m, p, C)
  # (gt, tp, bh, mh, ph, bw, mw, pw, C) -> (gt, bh, bw, mh, mw, C, tp, ph, pw)
  x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
  return x.reshape(gt * gh * gw, C * tp * p * p), (gt, gh, gw)
