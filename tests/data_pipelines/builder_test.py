"""TFDS builder: the bad-input zoo is reported and nothing good is lost; reuse and rebuild."""

import json
import os
from fractions import Fraction

from array_record.python import array_record_module
import av
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import builder
from data_pipelines import labels
from data_pipelines import pipeline
from data_pipelines import synthetic

FRAMES, SIZE = 4, 16


def _frames(n, height=32, width=48, seed=0):
  return np.random.default_rng(seed).integers(0, 255, (n, height, width, 3), np.uint8)


def _write(path, n=8, *, codec="libx264", pix_fmt="yuv420p", height=32, width=48, rotation=None,
           vfr=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, "w") as c:
    s = c.add_stream(codec, rate=24)
    s.width, s.height, s.pix_fmt = width, height, pix_fmt
    if rotation:
      s.set_display_rotation(rotation)
    if vfr:
      s.codec_context.time_base = Fraction(1, 1000)
    for i, img in enumerate(_frames(n, height, width, seed=n)):
      frame = av.VideoFrame.from_ndarray(img, format="rgb24")
      if vfr:
        frame.pts, frame.time_base = 37 * i + 20 * (i % 2), Fraction(1, 1000)
      c.mux(s.encode(frame))
    c.mux(s.encode())


def _zoo(root):
  """A video folder and label file mixing good inputs with one of each kind of bad one."""
  videos = os.path.join(root, "videos")
  os.makedirs(videos)
  good = {
      "plain.mp4": dict(),
      "short.mp4": dict(n=2),
      "rotated.mp4": dict(rotation=90),
      "odd_size.mkv": dict(codec="ffv1", pix_fmt="bgr0", height=23, width=37),
      "ten_bit.mp4": dict(pix_fmt="yuv420p10le"),
      "yuv444.mp4": dict(pix_fmt="yuv444p"),
      "vfr.mp4": dict(vfr=True, n=12),
      "sub dir/nested.mp4": dict(),
  }
  for name, kw in good.items():
    _write(os.path.join(videos, name), **kw)
  open(os.path.join(videos, "empty.mp4"), "wb").close()
  with open(os.path.join(videos, "garbage.mp4"), "wb") as f:
    f.write(np.random.default_rng(1).bytes(5000))
  _write(os.path.join(root, "whole.mp4"), n=30)
  with open(os.path.join(root, "whole.mp4"), "rb") as f:
    data = f.read()
  with open(os.path.join(videos, "truncated.mp4"), "wb") as f:
    f.write(data[:len(data) // 2])  # mp4 index (moov) is at the end: gone
  with av.open(os.path.join(videos, "audio.m4a"), "w") as c:
    s = c.add_stream("aac", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                       layout="mono")
    frame.sample_rate = 8000
    for p in [*s.encode(frame), *s.encode(None)]:
      c.mux(p)
  os.makedirs(os.path.join(videos, "a_folder.mp4"))
  _write(os.path.join(root, "outside.mp4"))  # exists, but must not be reachable
  bad = {  # id -> kind
      "missing.mp4": labels.MISSING_FILE,
      "empty.mp4": labels.ZERO_BYTES,
      "garbage.mp4": labels.UNDECODABLE,
      "truncated.mp4": labels.UNDECODABLE,
      "audio.m4a": labels.NO_VIDEO_STREAM,
      "a_folder.mp4": labels.NOT_A_FILE,
      "../outside.mp4": labels.ESCAPES_FOLDER,
      os.path.join(videos, "plain.mp4"): labels.ABSOLUTE_PATH,
      "nan.mp4": labels.BAD_SCORE,
      "words.mp4": labels.BAD_SCORE,
      "too_high.mp4": labels.SCORE_OUT_OF_RANGE,
      "": labels.EMPTY_ID,
  }
  scores = {name: 1.0 + 0.5 * i for i, name in enumerate(good)}
  rows = [{"image_id": k, "score": str(v)} for k, v in scores.items()]
  rows.insert(3, {"image_id": "plain.mp4", "score": "1.5"})  # duplicate: first one wins
  for k in bad:
    score = {"nan.mp4": "NaN", "words.mp4": "great", "too_high.mp4": "7.5"}.get(k, "3.0")
    rows.append({"image_id": k, "score": score})
  labels_path = os.path.join(root, "labels.json")
  with open(labels_path, "w") as f:
    json.dump({"annotations": rows}, f)
  bad["plain.mp4#2"] = labels.DUPLICATE_ID
  return labels_path, videos, scores, bad


@pytest.fixture(scope="module")
def zoo_build(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("zoo"))
  labels_path, videos, scores, bad = _zoo(root)
  data_dir = os.path.join(root, "data")
  report = builder.build("zoo", labels_path, videos, data_dir, FRAMES, SIZE,
                         mos_range=(1.0, 5.0), split="hash:0.5", progress=False)
  return report, scores, bad, data_dir


def _records(data_dir, name="zoo", honour_rotation=True):
  out = {}
  for split in ("train", "test"):
    try:
      src = tfds.data_source(builder.tfds_name(name, FRAMES, SIZE, honour_rotation), split=split,
                             data_dir=data_dir)
    except (KeyError, ValueError):
      continue
    out.update({r["video_id"].decode(): r for r in (src[i] for i in range(len(src)))})
  return out


def test_zoo_every_bad_kind_is_reported_with_its_reason(zoo_build):
  report, scores, bad, _ = zoo_build
  assert len(set(bad.values())) >= 10
  got = [(s["video_id"], s["kind"]) for s in report["skipped"]]
  want = [(k.split("#")[0] or "<row", v) for k, v in bad.items()]
  assert sorted((i if not i.startswith("<row") else "<row", k) for i, k in got) == sorted(want)
  assert all(s["detail"] for s in report["skipped"])
  assert report["skipped_by_kind"] == {k: list(bad.values()).count(k) for k in set(bad.values())}
  with open(os.path.join(os.path.dirname(report["dataset_dir"]), builder.REPORT_NAME)) as f:
    assert json.load(f) == {k: v for k, v in report.items() if k != "reused"}


def test_zoo_nothing_good_is_dropped_and_records_are_right(zoo_build):
  report, scores, bad, data_dir = zoo_build
  assert report["ok"] == len(scores) and report["label_rows"] == report["ok"] + len(bad)
  assert report["short"] == 1 and sum(report["splits"].values()) == len(scores)
  records = _records(data_dir)
  assert sorted(records) == sorted(scores)
  for video_id, r in records.items():
    assert r["frames"].shape == (FRAMES, SIZE, SIZE, 3) and r["frames"].dtype == np.uint8
    assert r["mos"] == np.float32(scores[video_id])  # stored as float32: one rounding
    assert r["label"] == np.float32(labels.normalise(scores[video_id], 1.0, 5.0))
    assert r["short"] == (video_id == "short.mp4")
  assert records["short.mp4"]["num_frames"] == 2
  assert records["vfr.mp4"]["num_frames"] == 12
  rot = records["rotated.mp4"]
  assert (rot["rotation"], rot["height"], rot["width"]) == (90, 48, 32)
  assert (records["odd_size.mkv"]["height"], records["odd_size.mkv"]["width"]) == (23, 37)


def test_rerun_reuses_then_rebuilds_on_changed_inputs(tmp_path):
  labels_path, videos = synthetic.generate(str(tmp_path / "src"), num_videos=4, num_frames=6,
                                           height=16, width=16)
  data_dir = str(tmp_path / "data")
  first = builder.build("synthetic", labels_path, videos, data_dir, FRAMES, SIZE, progress=False,
                        keep_cache=True)
  again = builder.build("synthetic", labels_path, videos, data_dir, FRAMES, SIZE, progress=False)
  assert not first["reused"] and again["reused"] and again["ok"] == first["ok"] == 4
  forced = builder.build("synthetic", labels_path, videos, data_dir, FRAMES, SIZE, progress=False,
                         overwrite=True)
  assert not forced["reused"] and forced["reused_from_cache"] == 4  # resumed from the cache
  with open(labels_path) as f:
    rows = json.load(f)["annotations"]
  rows[0]["score"] = "1.00"
  with open(labels_path, "w") as f:
    json.dump({"annotations": rows[:3]}, f)
  changed = builder.build("synthetic", labels_path, videos, data_dir, FRAMES, SIZE, progress=False)
  assert not changed["reused"] and changed["ok"] == 3
  records = _records(data_dir, "synthetic")
  assert sorted(records) == sorted(r["image_id"] for r in rows[:3])
  assert records[rows[0]["image_id"]]["mos"] == 1.0
  # Another sampling of the same benchmark sits beside it.
  other = builder.build("synthetic", labels_path, videos, data_dir, 2, 8, progress=False)
  assert other["dataset_dir"] != changed["dataset_dir"] and os.path.isdir(changed["dataset_dir"])


def test_rotation_switch_builds_another_set_and_never_reuses_the_other(tmp_path):
  videos = str(tmp_path / "videos")
  _write(os.path.join(videos, "rotated.mp4"), rotation=90)
  _write(os.path.join(videos, "plain.mp4"))
  labels_path = str(tmp_path / "labels.csv")
  with open(labels_path, "w") as f:
    f.write("video,mos\nrotated.mp4,40\nplain.mp4,60\n")
  data_dir = str(tmp_path / "data")
  kw = dict(split="train", progress=False)
  on = builder.build("phones", labels_path, videos, data_dir, FRAMES, SIZE, **kw)
  off = builder.build("phones", labels_path, videos, data_dir, FRAMES, SIZE, **kw,
                      honour_rotation=False)
  assert not off["reused"] and off["fingerprint"] != on["fingerprint"]
  assert (on["tfds_name"], off["tfds_name"]) == (
      f"video_quality/phones_{FRAMES}x{SIZE}", f"video_quality/phones_{FRAMES}x{SIZE}_norot")
  assert (on["honour_rotation"], off["honour_rotation"]) == (True, False)
  assert os.path.isdir(on["dataset_dir"]) and off["dataset_dir"] != on["dataset_dir"]
  assert builder.build("phones", labels_path, videos, data_dir, FRAMES, SIZE, **kw)["reused"]
  a = _records(data_dir, "phones")
  b = {r["video_id"].decode(): r
       for r in pipeline.data_source(data_dir, "phones", "train", FRAMES, SIZE, False)}
  # Square frames: the stored orientation is the displayed one turned back.
  np.testing.assert_array_equal(a["rotated.mp4"]["frames"],
                                np.rot90(b["rotated.mp4"]["frames"], 1, axes=(1, 2)))
  np.testing.assert_array_equal(a["plain.mp4"]["frames"], b["plain.mp4"]["frames"])
  assert a["rotated.mp4"]["rotation"] == b["rotated.mp4"]["rotation"] == 90
  with open(os.path.join(off["dataset_dir"], "metadata.json")) as f:
    assert json.load(f)["honour_rotation"] is False


def test_no_usable_video_fails_clearly_and_still_writes_the_report(tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  (videos / "bad.mp4").write_bytes(b"nope" * 100)
  labels_path = tmp_path / "labels.csv"
  labels_path.write_text("video,mos\nbad.mp4,50\nmissing.mp4,40\n")
  with pytest.raises(builder.BuildError, match="no video could be used") as e:
    builder.build("none_ok", str(labels_path), str(videos), str(tmp_path / "data"), FRAMES, SIZE,
                  progress=False)
  assert "bad.mp4" in str(e.value)
  report_path = tmp_path / "data" / builder.tfds_name("none_ok", FRAMES, SIZE) / builder.REPORT_NAME
  report = json.loads(report_path.read_text())
  assert report["ok"] == 0 and report["skipped_by_kind"] == {
      labels.MISSING_FILE: 1, labels.UNDECODABLE: 1}


def test_bad_arguments_name_the_culprit(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.json"):
    builder.build("x", str(tmp_path / "nope.json"), str(tmp_path), str(tmp_path))
  (tmp_path / "l.csv").write_text("video,mos\n")
  with pytest.raises(NotADirectoryError, match="no_videos"):
    builder.build("x", str(tmp_path / "l.csv"), str(tmp_path / "no_videos"), str(tmp_path))
  with pytest.raises(ValueError, match="Bad"):
    builder.build("Bad", str(tmp_path / "l.csv"), str(tmp_path), str(tmp_path))


def test_uncompressed_records_hold_the_same_examples(tmp_path):
  labels_path, videos = synthetic.generate(str(tmp_path / "src"), num_videos=3, num_frames=6,
                                           height=32, width=32)
  packed = builder.build("synthetic", labels_path, videos, str(tmp_path / "zstd"), FRAMES, SIZE,
                         split="train", progress=False)
  raw = builder.build("synthetic", labels_path, videos, str(tmp_path / "raw"), FRAMES, SIZE,
                      split="train", compress=False, progress=False)
  assert packed["compressed"] and not raw["compressed"]
  a, b = _records(str(tmp_path / "zstd"), "synthetic"), _records(str(tmp_path / "raw"), "synthetic")
  assert sorted(a) == sorted(b) and len(a) == 3
  for k in a:
    np.testing.assert_array_equal(a[k]["frames"], b[k]["frames"])
  def writer_options(report):
    d = report["dataset_dir"]
    paths = [os.path.join(d, f) for f in os.listdir(d) if ".array_record-" in f]
    return {array_record_module.ArrayRecordReader(p).writer_options_string() for p in paths}
  assert all("uncompressed" in o for o in writer_options(raw))
  assert all("zstd" in o for o in writer_options(packed))
