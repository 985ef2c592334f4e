"""Label files, per-benchmark settings (MOS scale, split rule) and validation of ids and scores."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A data set's name, the MOS scale mapped onto [1, 5] and its train/test split rule.

  mos_range: (lo, hi) of the native rating scale; None uses min-max of the label file.
  split: 'train' or 'test' puts every video there; 'hash:F' sends a stable fraction F of the
  ids (by a hash of the id, so independent of file order) to test and the rest to train.
  """
  name: str
  mos_range: tuple[float, float] | None
  split: str


# docs/method.md §5 benchmarks. Ranges are the scales of the reference release's label files
# (their "ds" scores are on 0..100; observed extremes lie inside).
BENCHMARKS = {b.name: b for b in [
    Benchmark("lsvq_train", (0.0, 100.0), "train"),
    Benchmark("lsvq_test", (0.0, 100.0), "test"),
    Benchmark("lsvq_1080p", (0.0, 100.0), "test"),
    Benchmark("konvid_1k", (0.0, 100.0), "test"),
    Benchmark("live_vqc", (0.0, 100.0), "test"),
    Benchmark("youtube_ugc", (1.0, 5.0), "test"),
    Benchmark("live_yt_gaming", (0.0, 100.0), "test"),
    # CGVDS scores reach 6.06 with no documented scale: min-max of the file.
    Benchmark("cgvds", None, "test"),
    Benchmark("live_yt_hfr", (0.0, 100.0), "test"),
    Benchmark("waterloo_ivc_4k", (0.0, 100.0), "test"),
    Benchmark("vdpve", (0.0, 100.0), "test"),
    Benchmark("kvq", (1.0, 5.0), "test"),
    Benchmark("synthetic", (1.0, 5.0), "hash:0.25"),
]}

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")

# Problem kinds; the build report groups skipped videos by these.
EMPTY_ID = "empty_id"
ABSOLUTE_PATH = "absolute_path"
ESCAPES_FOLDER = "escapes_folder"
BAD_SCORE = "bad_score"
SCORE_OUT_OF_RANGE = "score_out_of_range"
DUPLICATE_ID = "duplicate_id"
MISSING_FILE = "missing_file"
NOT_A_FILE = "not_a_file"
ZERO_BYTES = "zero_bytes"
NO_VIDEO_STREAM = "no_video_stream"
UNDECODABLE = "undecodable"
WORKER_CRASHED = "worker_crashed"


def benchmark(name, mos_range=None, split=None):
  """The named benchmark with optional overrides; other names get min-max scale, 20 % test."""
  if not _NAME_RE.fullmatch(name or ""):
    raise ValueError(f"data set name {name!r} must be lower-case letters, digits and _")
  base = BENCHMARKS.get(name, Benchmark(name, None, "hash:0.2"))
  if mos_range is not None:
    lo, hi = (float(x) for x in mos_range)
    if not hi > lo:
      raise ValueError(f"mos_range must be lo,hi with hi > lo, got {mos_range}")
    base = dataclasses.replace(base, mos_range=(lo, hi))
  if split is not None:
    split_of(dataclasses.replace(base, split=split), "")  # validates the rule
    base = dataclasses.replace(base, split=split)
  return base


@dataclasses.dataclass(frozen=True)
class Label:
  video_id: str
  mos: float


@dataclasses.dataclass(frozen=True)
class Problem:
  """One skipped label or video: `kind` is one of the constants above, `detail` says why."""
  video_id: str
  kind: str
  detail: str


def read(path):
  """Parses a label file -> (labels, problems). JSON {"annotations": [...]} or CSV video,mos.

  Bad rows never raise: each becomes a Problem; of duplicate ids the first is kept. A file
  that is not a label file at all raises ValueError naming it.
  """
  path = str(path)
  rows = _json_rows(path) if path.lower().endswith(".json") else _csv_rows(path)
  labels, problems, seen = [], [], set()
  for n, (video_id, score) in enumerate(rows):
    video_id = video_id.strip() if isinstance(video_id, str) else ""
    problem = _id_problem(video_id, n) or _score_problem(video_id, score)
    if not problem and video_id in seen:
      problem = Problem(video_id, DUPLICATE_ID, f"row {n}: duplicate id (first occurrence kept)")
    if problem:
      problems.append(problem)
      continue
    seen.add(video_id)
    labels.append(Label(video_id, float(score)))
  return labels, problems


def _json_rows(path):
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
    raise ValueError(f'{path}: expected {{"annotations": [{{"image_id", "score"}}, ...]}}')
  return [(a.get("image_id"), a.get("score")) if isinstance(a, dict) else (None, None)
          for a in data["annotations"]]


def _csv_rows(path):
  with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets add a BOM
    reader = csv.DictReader(f)
    fields = reader.fieldnames or []
    id_key = next((k for k in ("video", "image_id", "video_id") if k in fields), None)
    score_key = next((k for k in ("mos", "score") if k in fields), None)
    if not id_key or not score_key:
      raise ValueError(f"{path}: CSV needs a header with columns video,mos (got {fields})")
    return [(r[id_key], r[score_key]) for r in reader]


def _id_problem(video_id, row):
  if not video_id:
    return Problem(f"<row {row}>", EMPTY_ID, f"row {row}: empty or missing video id")
  if os.path.isabs(video_id) or pathlib.PureWindowsPath(video_id).drive or "\0" in video_id:
    return Problem(video_id, ABSOLUTE_PATH, "absolute path (ids are relative to the video folder)")
  if ".." in pathlib.PurePosixPath(video_id.replace("\\", "/")).parts:
    return Problem(video_id, ESCAPES_FOLDER, "id escapes the video folder (..)")
  return None


def _score_problem(video_id, score):
  # bool is an int subclass: a JSON true must not become a score of 1.
  if isinstance(score, bool):
    return Problem(video_id, BAD_SCORE, f"non-numeric score {score!r}")
  try:
    value = float(score)
  except (TypeError, ValueError):
    return Problem(video_id, BAD_SCORE, f"non-numeric score {score!r}")
  if not math.isfinite(value):
    return Problem(video_id, BAD_SCORE, f"non-finite score {score!r}")
  return None


def check_range(bench, labels):
  """Splits labels into (inside, problems) by the benchmark's declared MOS scale."""
  if not bench.mos_range:
    return list(labels), []
  lo, hi = bench.mos_range
  inside = [l for l in labels if lo <= l.mos <= hi]
  problems = [Problem(l.video_id, SCORE_OUT_OF_RANGE, f"score {l.mos} outside [{lo}, {hi}]")
              for l in labels if not lo <= l.mos <= hi]
  return inside, problems


def mos_range(bench, labels):
  """The (lo, hi) scale: the benchmark's, else min-max of the labels."""
  if bench.mos_range:
    return bench.mos_range
  scores = [l.mos for l in labels]
  lo, hi = min(scores), max(scores)
  # A single distinct score: centre it at 3 rather than divide by zero.
  return (lo, hi) if hi > lo else (lo - 1.0, hi + 1.0)


def normalise(mos, lo, hi):
  """docs/method.md §2: 1 + 4 (s - lo) / (hi - lo), clipped to [1, 5]."""
  return min(5.0, max(1.0, 1.0 + 4.0 * (mos - lo) / (hi - lo)))


def split_of(bench, video_id):
  """'train' or 'test' for this id under the benchmark's split rule."""
  if bench.split in ("train", "test"):
    return bench.split
  if bench.split.startswith("hash:"):
    try:
      fraction = float(bench.split[5:])
    except ValueError:
      fraction = -1.0
    if 0.0 <= fraction <= 1.0:
      h = int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "big") / 2**64
      return "test" if h < fraction else "train"
  raise ValueError(f"unknown split rule {bench.split!r} (use train, test or hash:F, 0 <= F <= 1)")
