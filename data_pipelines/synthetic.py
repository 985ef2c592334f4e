"""Synthetic quality data set: rendered clips with graded distortions and a formula MOS.

Legend: T = frames, H x W = frame size, 3 = RGB channels.

Each clip has a level 0..3 in each of eight distortions: spatial ones act on the pixels
(blur, noise, exposure, colour cast; compression by really encoding at a CRF), temporal ones
on the clip's time line (stutter holds frames, frame drops skip content, judder unevens the
steps). A clip gets 0..3 active distortions (uniform), each at a uniform level 1..3, and

  MOS = clip(1 + 4 exp(-sum_k WEIGHTS[k] level_k / 3) + N(0, RATER_NOISE²), 1, 5),

rounded to 2 decimals: strictly decreasing in every level, 5 for a pristine clip up to the
rater noise. Written as mp4 (H.264) + a label JSON in the reference layout, so it goes
through the same builder path as real data. Deterministic from the seed.
"""

from __future__ import annotations

import json
import multiprocessing
import os

import av
import numpy as np

LEVELS = 4  # 0 (none) .. 3 (strong)
WEIGHTS = dict(blur=1.2, noise=1.0, compression=1.4, exposure=0.8, colour_cast=0.6,
               stutter=0.8, frame_drop=0.9, judder=0.6)
MAX_ACTIVE = 3
RATER_NOISE = 0.1
BLUR_SIGMA = (0.0, 0.8, 1.6, 2.6)
NOISE_STD = (0.0, 6.0, 12.0, 22.0)
CRF = (16, 30, 40, 50)
EXPOSURE_GAIN = (0.0, 0.25, 0.45, 0.65)  # multiplicative
# Exposure's direction: drawn per clip (both), or always darker (under) or brighter (over).
EXPOSURE = {"both": None, "under": -1, "over": 1}
CAST_OFFSET = (0.0, 12.0, 24.0, 40.0)


def mos(levels, rng=None):
  """The documented MOS formula; `rng` adds rater noise (None: noiseless)."""
  deficit = sum(WEIGHTS[k] * levels[k] / (LEVELS - 1) for k in WEIGHTS)
  score = 1.0 + 4.0 * np.exp(-deficit)
  if rng is not None:
    score += rng.normal(0.0, RATER_NOISE)
  return float(np.clip(score, 1.0, 5.0))


def draw_levels(rng, distortions=None, strengths=(1, 2, 3)):
  """0..MAX_ACTIVE distinct distortions of `distortions` (default: all), each at a level
  drawn uniformly from `strengths` (default 1..3; a subset holds strengths out, e.g. for an
  out-of-distribution split); the rest 0."""
  names = list(WEIGHTS if distortions is None else distortions)
  active = rng.choice(len(names), int(rng.integers(min(MAX_ACTIVE, len(names)) + 1)),
                      replace=False)
  levels = dict.fromkeys(WEIGHTS, 0)
  for i in active:  # (1, 2, 3) draws as rng.integers(1, 4): the same stream as before
    levels[names[i]] = int(strengths[int(rng.integers(len(strengths)))])
  return levels


def timeline(levels, num_frames, rng):
  """Content time of each output frame: stutter holds, drops skip, judder unevens the steps."""
  step_T = np.ones(num_frames)
  step_T[rng.choice(num_frames, levels["stutter"] * num_frames // 8, replace=False)] = 0.0
  step_T[rng.choice(num_frames, levels["frame_drop"] * num_frames // 8, replace=False)] = 3.0
  step_T += 0.3 * levels["judder"] * np.where(np.arange(num_frames) % 2, 1.0, -1.0)
  step_T[0] = 0.0
  return np.cumsum(step_T)


def render(time_T, height, width, rng):
  """Textured moving content (gradient, drifting bars, moving discs) at content times `time_T`.

  Returns float32 frames_TxHxWx3 in [0, 255]-ish (distortions may push it out; clipped later).
  """
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  base_colour = rng.uniform(40, 200, 3)
  freq, speed = rng.uniform(0.15, 0.5), rng.uniform(0.5, 2.0)
  discs = rng.uniform(0, 1, (3, 4))  # colour/centre, phase, radius
  frames = []
  for t in time_T:
    img = base_colour + 30 * np.sin(freq * (x + speed * t))[..., None] * np.array([1, 0.6, 0.3])
    img = img + 40 * (y / height - 0.5)[..., None]
    for cy, cx, r, ph in discs:
      py = height * (0.5 + 0.35 * np.sin(0.15 * t + 6 * ph))
      px = width * ((cx + 0.02 * speed * t) % 1.0)
      inside = (y - py) ** 2 + (x - px) ** 2 < (0.1 + 0.15 * r) ** 2 * height * width
      img = np.where(inside[..., None], np.array([255 * cy, 255 * ph, 255 * r]), img)
    frames.append(img)
  return np.stack(frames).astype(np.float32)


def _blur(frames_TxHxWx3, sigma):
  if sigma == 0:
    return frames_TxHxWx3
  radius = int(3 * sigma + 0.5)
  kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  kernel /= kernel.sum()
  out = frames_TxHxWx3
  for axis in (1, 2):  # separable
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    padded = np.pad(out, pad, mode="edge")
    n = out.shape[axis]
    out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
  return out


def distort(frames_TxHxWx3, levels, rng, exposure="both"):
  """Pixel-domain distortions (all but compression, which happens in the encoder);
  `exposure` is a key of EXPOSURE."""
  out = _blur(frames_TxHxWx3, BLUR_SIGMA[levels["blur"]])
  out = out + rng.normal(0.0, NOISE_STD[levels["noise"]], out.shape)
  sign = rng.choice([-1, 1])  # drawn either way: a fixed direction changes no other draw
  sign = EXPOSURE[exposure] or sign
  out = out * (1.0 + sign * EXPOSURE_GAIN[levels["exposure"]])
  cast = rng.normal(size=3)
  out = out + CAST_OFFSET[levels["colour_cast"]] * cast / np.linalg.norm(cast)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def encode(path, frames_TxHxWx3, crf=16, fps=24, pix_fmt="yuv420p", gop=None):
  """H.264 at `crf`; 4:2:0 needs an even height and width."""
  _, height, width, _ = frames_TxHxWx3.shape
  if pix_fmt == "yuv420p" and (height % 2 or width % 2):
    raise ValueError(f"{path}: yuv420p needs even sizes, got {width}x{height}")
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    # x264's rate-control look-ahead (mb-tree) is not bit-reproducible from run to run here;
    # without it, and on one thread, the same frames give the same file.
    stream.options = {"crf": str(crf), "preset": "veryfast",
                      "x264-params": "rc-lookahead=0:mbtree=0", **({"g": str(gop)} if gop else {})}
    stream.codec_context.thread_count = 1
    for img in frames_TxHxWx3:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
    container.mux(stream.encode())


def scene_of(video_id: str, scenes: int) -> int:
  """The scene clip `video_id` (as `make_clip` names it) shows when rendered with `scenes`
  > 0 scenes: drawn independently of its distortions, so of its MOS."""
  stem = os.path.basename(video_id).split(".")[0]
  if not stem.startswith("synthetic_") or scenes < 1:
    raise ValueError(f"{video_id!r} is not a synthetic clip of a set with scenes > 0")
  return int(stem[len("synthetic_"):]) % scenes


def make_clip(args):
  """Renders, distorts and encodes clip `index` -> (video_id, mos, levels). Deterministic."""
  (videos_dir, index, seed, num_frames, height, width, fps, distortions, scenes, strengths,
   exposure) = args
  rng = np.random.default_rng([seed, index])
  levels = draw_levels(rng, distortions, strengths)
  time_T = timeline(levels, num_frames, rng)
  # `scenes` > 0: clip i shows scene i % scenes (its own content draws), so the quality
  # differences are all the set varies in; 0: every clip its own scene.
  scene_rng = np.random.default_rng([seed, index % scenes, 1 << 20]) if scenes else rng
  frames = render(time_T, height, width, scene_rng)
  video_id = f"synthetic_{index:05d}.mp4"
  encode(os.path.join(videos_dir, video_id), distort(frames, levels, rng, exposure),
         CRF[levels["compression"]], fps)
  return video_id, round(mos(levels, rng), 2), levels


def generate(out_dir, num_videos=48, seed=0, num_frames=24, height=64, width=96, fps=24,
             workers=0, distortions=None, scenes=0, strengths=(1, 2, 3), exposure="both"):
  """Writes out_dir/videos/*.mp4, out_dir/labels.json and out_dir/distortions.json.

  `distortions`: the kinds a clip may get (names of WEIGHTS; None: all), e.g. the ones a
  tiny model can see at low resolution; `scenes` > 0 renders only that many distinct
  scenes (clip i shows scene i % scenes), 0 one per clip; `strengths` the levels an active
  distortion may take; `exposure` its direction (a key of EXPOSURE). Scenes are drawn from
  `seed`: another seed renders other scenes.
  Returns (labels_path, videos_dir), ready for builder.build("synthetic", ...).
  """
  if num_videos < 1 or num_frames < 1:
    raise ValueError(f"need num_videos >= 1 and num_frames >= 1, got {num_videos}, {num_frames}")
  if distortions is not None:
    distortions = tuple(distortions)
    unknown = sorted(set(distortions) - set(WEIGHTS))
    if unknown or not distortions:
      raise ValueError(f"distortions {unknown or '(none)'} not among {sorted(WEIGHTS)}")
  if exposure not in EXPOSURE:
    raise ValueError(f"exposure must be one of {sorted(EXPOSURE)}, got {exposure!r}")
  if scenes < 0:
    raise ValueError(f"scenes must be >= 0, got {scenes}")
  strengths = tuple(int(x) for x in strengths)
  if not strengths or any(not 1 <= x < LEVELS for x in strengths):
    raise ValueError(f"strengths must be levels in 1..{LEVELS - 1}, got {strengths}")
  # Only once every argument is good, so that a bad call leaves nothing behind.
  videos_dir = os.path.join(out_dir, "videos")
  os.makedirs(videos_dir, exist_ok=True)
  jobs = [(videos_dir, i, seed, num_frames, height, width, fps, distortions, scenes, strengths,
           exposure) for i in range(num_videos)]
  if workers > 0:
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      clips = pool.map(make_clip, jobs)
  else:
    clips = [make_clip(j) for j in jobs]
  labels_path = os.path.join(out_dir, "labels.json")
  with open(labels_path, "w") as f:
    json.dump({"annotations": [{"image_id": v, "score": f"{m:.2f}"} for v, m, _ in clips]}, f,
              indent=1)
  with open(os.path.join(out_dir, "distortions.json"), "w") as f:
    json.dump({v: lv for v, _, lv in clips}, f, indent=1)
  return labels_path, videos_dir
