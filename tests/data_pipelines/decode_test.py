"""PyAV decoding: docs/method.md §2 frame indices, seeking, rotation and real-world formats."""

from fractions import Fraction

import av
import numpy as np
import pytest

from data_pipelines import decode

BITS = 10  # frame number written as 10 vertical stripes, black or white
STRIPE = 8
W = BITS * STRIPE


def _pattern(i, height=16):
  bits = (i >> np.arange(BITS)) & 1
  row = np.repeat(np.where(bits, 235, 20), STRIPE).astype(np.uint8)
  return np.ascontiguousarray(np.broadcast_to(row[None, :, None], (height, BITS * STRIPE, 3)))


def _read_numbers(frames_TxHxWx3):
  centres = frames_TxHxWx3[:, :, STRIPE // 2::STRIPE].mean(axis=(1, 3))  # T x BITS
  return [int(((c > 128) << np.arange(BITS)).sum()) for c in centres]


def write_clip(path, n, *, codec="libx264", pix_fmt="yuv420p", gop=None, rotation=None,
               durations_ms=None):
  """n frames, frame i showing the number i; durations_ms gives a variable frame rate."""
  with av.open(str(path), "w") as c:
    s = c.add_stream(codec, rate=24)
    s.width, s.height, s.pix_fmt = BITS * STRIPE, 16, pix_fmt
    if codec == "libx264":
      s.options = {"crf": "12", "threads": "1", **({"g": str(gop)} if gop else {})}
    if rotation is not None:
      s.set_display_rotation(rotation)
    if durations_ms:
      s.codec_context.time_base = Fraction(1, 1000)
    t = 0
    for i in range(n):
      frame = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
      if durations_ms:
        frame.pts, frame.time_base = t, Fraction(1, 1000)
        t += durations_ms[i % len(durations_ms)]
      c.mux(s.encode(frame))
    c.mux(s.encode())
  return str(path)


def _formula(num_frames, t):
  seg = (num_frames - 1) / t
  return [int(seg / 2 + round(seg * k)) for k in range(t)]  # Python round: half to even


@pytest.mark.parametrize("num_frames", [1, 2, 3, 5, 6, 7, 12, 13, 48, 100, 241, 300, 1001])
@pytest.mark.parametrize("t", [6, 12])
def test_frame_indices_follow_spec_formula(num_frames, t):
  idx = decode.frame_indices(num_frames, t)
  assert list(idx) == _formula(num_frames, t)
  assert idx.min() >= 0 and idx.max() <= num_frames - 1 and np.all(np.diff(idx) >= 0)


def test_frame_indices_known_values():
  # seg = 299/6 = 49.83: int(24.92 + round(49.83 k)).
  assert list(decode.frame_indices(300, 6)) == [24, 74, 124, 174, 223, 273]
  assert list(decode.frame_indices(5, 6)) == [0, 1, 1, 2, 3, 3]
  with pytest.raises(ValueError):
    decode.frame_indices(0, 6)


@pytest.mark.parametrize("n", [4, 6, 30, 130])
def test_decoded_frames_are_the_sampled_ones(tmp_path, n):
  path = write_clip(tmp_path / "c.mp4", n, gop=12)
  d = decode.decode(path, 6, 16, BITS * STRIPE)
  assert d.frames_TxHxWx3.shape == (6, 16, W, 3) and d.frames_TxHxWx3.dtype == np.uint8
  assert _read_numbers(d.frames_TxHxWx3) == _formula(n, 6)
  assert (d.num_frames, d.fps, d.height, d.width, d.rotation, d.repeated) == (n, 24.0, 16, W, 0, 0)


def test_long_video_seeks_instead_of_decoding_everything(tmp_path, monkeypatch):
  path = write_clip(tmp_path / "long.mp4", 400, gop=25)
  def no_linear(*_):
    raise AssertionError("fell back to decoding every frame")
  monkeypatch.setattr(decode, "_pick_linear", no_linear)
  d = decode.decode(path, 12, 16, W)
  assert _read_numbers(d.frames_TxHxWx3) == _formula(400, 12)


def test_variable_frame_rate_counts_frames_not_duration(tmp_path):
  path = write_clip(tmp_path / "vfr.mp4", 60, durations_ms=[10, 80, 30], gop=10)
  d = decode.decode(path, 6, 16, W)
  assert d.num_frames == 60
  assert _read_numbers(d.frames_TxHxWx3) == _formula(60, 6)


def _rotated_clip(path, rotation):
  """(path, stored frame): one lossless 16x32 frame with a marker top-left, and rotation
  metadata."""
  stored = np.full((16, 32, 3), 30, np.uint8)
  stored[:8, :8] = 220  # a marker in the top-left corner
  with av.open(str(path), "w") as c:
    s = c.add_stream("libx264", rate=24)
    s.width, s.height, s.pix_fmt, s.options = 32, 16, "yuv444p", {"crf": "0"}
    s.set_display_rotation(rotation)
    c.mux(s.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
    c.mux(s.encode())
  return str(path), stored


@pytest.mark.parametrize("rotation,k", [(90, 1), (-90, 3), (180, 2), (0, 0)])
def test_rotation_metadata_is_applied(tmp_path, rotation, k):
  path, stored = _rotated_clip(tmp_path / "rot.mp4", rotation)
  want = np.rot90(stored, k)  # displayed = stored turned counter-clockwise by the angle
  d = decode.decode(path, 2, *want.shape[:2])
  assert d.rotation == k * 90 and (d.height, d.width) == want.shape[:2]
  assert np.abs(d.frames_TxHxWx3[0].astype(int) - want).mean() < 4


@pytest.mark.parametrize("rotation,k", [(90, 1), (-90, 3), (180, 2), (0, 0)])
def test_rotation_can_be_ignored_as_the_reference_does(tmp_path, rotation, k):
  path, stored = _rotated_clip(tmp_path / "rot.mp4", rotation)
  off = decode.decode(path, 2, 16, 32, honour_rotation=False)
  assert np.abs(off.frames_TxHxWx3[0].astype(int) - stored).mean() < 4  # stored orientation
  # The clip's facts do not depend on the switch.
  on = decode.decode(path, 2, 16, 32)
  assert (off.rotation, off.height, off.width) == (on.rotation, on.height, on.width)
  # Square output (as the data sets are): the same resize, only the turn differs.
  on, off = (decode.decode(path, 2, 24, honour_rotation=h).frames_TxHxWx3 for h in (True, False))
  np.testing.assert_array_equal(on, np.rot90(off, k, axes=(1, 2)))


@pytest.mark.parametrize("codec,pix_fmt,ext", [
    ("libx264", "yuv420p10le", "mp4"),  # 10-bit
    ("libx264", "yuv444p", "mp4"),  # not 4:2:0
    ("mpeg4", "yuv420p", "avi"),
    ("ffv1", "bgr0", "mkv"),  # RGB, lossless
])
def test_other_formats_decode_to_rgb(tmp_path, codec, pix_fmt, ext):
  path = write_clip(tmp_path / f"c.{ext}", 13, codec=codec, pix_fmt=pix_fmt)
  d = decode.decode(path, 6, 16, W)
  assert _read_numbers(d.frames_TxHxWx3) == _formula(13, 6)


def test_odd_sizes_and_squash_resize(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / "odd.mkv"
  with av.open(str(path), "w") as c:
    s = c.add_stream("ffv1", rate=24)
    s.width, s.height, s.pix_fmt = 37, 23, "bgr0"
    for _ in range(3):
      img = rng.integers(0, 255, (23, 37, 3), np.uint8)
      c.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
    c.mux(s.encode())
  d = decode.decode(path, 6, 30, 11)
  assert d.frames_TxHxWx3.shape == (6, 30, 11, 3) and (d.height, d.width) == (23, 37)


def test_short_video_repeats_frames_within_the_clip(tmp_path):
  path = write_clip(tmp_path / "short.mp4", 2)
  d = decode.decode(path, 6, 16, W)
  assert d.num_frames == 2 and _read_numbers(d.frames_TxHxWx3) == [0, 0, 0, 0, 1, 1]


def test_truncated_stream_gives_the_frames_that_exist(tmp_path):
  good = write_clip(tmp_path / "whole.ts", 120, gop=10)  # MPEG-TS: still readable when cut
  data = open(good, "rb").read()
  cut = tmp_path / "cut.ts"
  cut.write_bytes(data[:len(data) // 2])
  d = decode.decode(cut, 6, 16, W)
  assert 0 < d.num_frames < 120 and d.repeated == 0
  assert _read_numbers(d.frames_TxHxWx3) == _formula(d.num_frames, 6)


def test_lost_slots_repeat_a_neighbour_and_are_counted():
  frames = [av.VideoFrame.from_ndarray(_pattern(i), format="rgb24") for i in (3, 7)]
  d = decode._assemble([None, frames[0], None, frames[1], None], 9, 24.0, 16, W)
  assert _read_numbers(d.frames_TxHxWx3) == [3, 3, 3, 7, 7] and d.repeated == 3
  with pytest.raises(decode.DecodeError, match="no decodable"):
    decode._assemble([None, None], 9, 24.0, 16, W)


@pytest.mark.parametrize("content,match", [
    (b"", "Invalid data|EOF|no video"),
    (b"this is not a video" * 50, "Invalid data"),
])
def test_garbage_raises_decode_error_naming_the_file(tmp_path, content, match):
  path = tmp_path / "bad.mp4"
  path.write_bytes(content)
  with pytest.raises(decode.DecodeError, match=match) as e:
    decode.decode(path, 6, 16)
  assert str(path) in str(e.value)


def test_audio_only_file_is_not_a_video(tmp_path):
  path = tmp_path / "audio.m4a"
  with av.open(str(path), "w") as c:
    s = c.add_stream("aac", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                       layout="mono")
    frame.sample_rate = 8000
    for p in s.encode(frame):
      c.mux(p)
    for p in s.encode(None):
      c.mux(p)
  with pytest.raises(decode.DecodeError, match="no video stream") as e:
    decode.decode(path, 6, 16)
  assert e.value.no_video
