"""Video decoding with PyAV: docs/method.md §2 frame sampling, rotation, bicubic squash resize.

Rotation metadata (phone clips) is honoured by default: frames come out as a player shows
them. `honour_rotation=False` keeps the stored orientation, as the reference's reader
does (its rotated clips reach the model sideways).

Legend: T = sampled frames, H x W = output size, 3 = RGB channels (uint8).
"""

from __future__ import annotations

import dataclasses

import av
import numpy as np

# Above this gap (in frames) between two wanted frames a seek beats decoding through.
SEEK_GAP = 48


class DecodeError(ValueError):
  """A file that cannot give the frames asked for; the message names the file and why."""

  def __init__(self, message, no_video=False):
    super().__init__(message)
    self.no_video = no_video


@dataclasses.dataclass(frozen=True)
class Decoded:
  frames_TxHxWx3: np.ndarray
  num_frames: int  # frames in the source (demuxed packets: exact even for VFR, no decoding)
  fps: float  # average rate
  height: int  # displayed size, i.e. after rotation
  width: int
  # The clip's display rotation, degrees counter-clockwise from the stored orientation; the
  # frames are turned by it only with honour_rotation (height/width stay the displayed size).
  rotation: int
  repeated: int  # slots filled with a neighbour because their frame would not decode


def frame_indices(num_frames, num_samples):
  """docs/method.md §2 segment centres: seg = last_idx / T, idx_k = int(seg/2 + round(seg*k)).

  A clip shorter than T frames gets repeated indices (never past its last frame).
  """
  if num_frames < 1 or num_samples < 1:
    raise ValueError(f"need num_frames >= 1 and num_samples >= 1, got {num_frames}, {num_samples}")
  seg = (num_frames - 1) / num_samples
  # np.round rounds half to even, as the reference's sampler (InternVL get_index) does.
  return np.array([int(seg / 2 + np.round(seg * k)) for k in range(num_samples)], np.int64)


def decode(path, num_samples, height, width=None, *, honour_rotation=True):
  """Decodes `num_samples` frames of `path` as uint8 `frames_TxHxWx3`, squash-resized bicubic.

  ``honour_rotation``: turn the frames to their displayed orientation (the clip's rotation
  metadata); False keeps the stored one, as the reference's reader does.
  """
  width = height if width is None else width
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise DecodeError("no video stream (audio-only or not a video)", no_video=True)
      stream = container.streams.video[0]
      # Packets, not frames: exact counts without decoding (discarded ones never show).
      pts = [p.pts for p in container.demux(stream) if p.size and not p.is_discard]
    if not pts:
      raise DecodeError("video stream has no packets")
    wanted = frame_indices(len(pts), num_samples)
    # Without timestamps (raw streams) only the decode order can be trusted.
    targets = list(wanted) if None in pts else [sorted(pts)[i] for i in wanted]
    key = None if None in pts else "pts"
    picked = None
    with av.open(str(path)) as container:
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      rate = stream.average_rate or stream.guessed_rate or 0
      if key and len(pts) > SEEK_GAP:
        picked = _pick_seeking(container, stream, targets, wanted)
    if picked is None:  # short clip, or a seek went wrong: one pass from the start
      with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        picked = _pick_linear(container.decode(stream), targets, key)
    return _assemble(picked, len(pts), float(rate), height, width, honour_rotation)
  except DecodeError as e:
    raise DecodeError(f"{path}: {e}", e.no_video) from None
  except (av.FFmpegError, OSError, EOFError, ValueError, IndexError, RuntimeError) as e:
    raise DecodeError(f"{path}: {type(e).__name__}: {e}") from None


def _pick_linear(frames, targets, key):
  """One pass through the decoder, keeping only the wanted frames (constant memory)."""
  need = set(targets)
  got = {}
  for n, frame in enumerate(frames):
    k = n if key is None else frame.pts
    if k in need and k not in got:
      got[k] = frame
      if len(got) == len(need):
        break
  return [got.get(t) for t in targets]


def _pick_seeking(container, stream, targets, wanted):
  """Long videos: seek to the keyframe before each far target and decode forward.

  Returns None if a target is not found exactly (a seek landed past it, a broken index or a
  damaged frame): the caller then decodes linearly, which is slow but finds what exists.
  """
  picked, frames, last = [], None, None
  for target, idx in zip(targets, wanted):
    if idx == last:
      picked.append(picked[-1])
      continue
    if frames is None or idx - last > SEEK_GAP:
      container.seek(target, stream=stream, backward=True, any_frame=False)
      frames = container.decode(stream)
    got = next((f for f in frames if f.pts is not None and f.pts >= target), None)
    if got is None or got.pts != target:
      return None
    picked.append(got)
    last = idx
  return picked


def _assemble(picked, num_frames, fps, height, width, honour_rotation=True):
  """Fills lost slots from neighbours, rotates to display orientation (if honoured) and
  resizes."""
  if all(f is None for f in picked):
    raise DecodeError("no decodable video frame")
  repeated = sum(f is None for f in picked)
  filled = list(picked)
  for i in range(1, len(filled)):  # a lost slot repeats the previous frame ...
    filled[i] = filled[i] or filled[i - 1]
  for i in range(len(filled) - 2, -1, -1):  # ... or the next one if it is the first
    filled[i] = filled[i] or filled[i + 1]
  first = filled[0]
  rotation = int(round(getattr(first, "rotation", 0) / 90)) % 4 * 90
  swap = rotation in (90, 270)
  turns = rotation // 90 if honour_rotation else 0
  # Resized at the stored orientation to the size the turn makes H x W.
  out_h, out_w = (width, height) if turns % 2 else (height, width)
  cache = {}
  images = []
  for f in filled:
    if id(f) not in cache:
      rgb = f.to_ndarray(format="rgb24", width=out_w, height=out_h, interpolation="BICUBIC")
      cache[id(f)] = np.rot90(rgb, turns)
    images.append(cache[id(f)])
  src_h, src_w = (first.width, first.height) if swap else (first.height, first.width)
  return Decoded(np.ascontiguousarray(np.stack(images)), num_frames, fps, src_h, src_w,
                 rotation, repeated)
