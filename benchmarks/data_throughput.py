"""Data loading throughput: pre-decoded ArrayRecord + Grain vs decoding with PyAV on the fly.

  python benchmarks/data_throughput.py [--videos 8 --clip_frames 240 --clip_height 540
      --clip_width 960 --frames 6 --size 448 --runs 5 --workers 0 --workdir DIR
      --out FILE.json]

Renders `videos` H.264 clips (the synthetic set's content, x264's default GOP), builds the
ArrayRecord set from them twice (zstd records, the default, and uncompressed), then times,
`runs` times each, interleaved in the same process: decoding every clip with `decode.decode`
(the reference's approach: sample T frames and resize at every step) and reading the same
clips as batches from the Grain pipeline (records, TFDS decoding, shuffle, perturbation
maps, batching) over a data set of `records` (the clips tiled). In these warm runs the
records sit in the page cache, as the clips do for the decoder. The cold runs first evict
the clips and the record files from the page cache (`posix_fadvise(DONTNEED)`, no root
needed), then decode every clip once, or read every distinct record once as the pipeline
reads one (random access and TFDS decoding, without the batching around it): the first
epoch of a set that is not in memory. Prints one JSON object (and writes it to `--out`) with the
provenance (date, CPU model, commit, command, load); rates are medians, with quartiles.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _timing  # noqa: E402  (benchmarks/, beside this file)
from data_pipelines import builder  # noqa: E402
from data_pipelines import decode  # noqa: E402
from data_pipelines import pipeline  # noqa: E402
from data_pipelines import synthetic  # noqa: E402

_VIDEOS = flags.DEFINE_integer("videos", 8, "clips to render and read")
_CLIP_FRAMES = flags.DEFINE_integer("clip_frames", 240, "frames per clip (8 s at 30 fps)")
# 540p, 8 s: a typical user-generated clip of the docs/method.md §5 sets (LSVQ, KoNViD-1k).
_CLIP_HEIGHT = flags.DEFINE_integer("clip_height", 540, "clip height (even)")
_CLIP_WIDTH = flags.DEFINE_integer("clip_width", 960, "clip width (even)")
_FRAMES = flags.DEFINE_integer("frames", 6, "frames sampled per video (T)")
_SIZE = flags.DEFINE_integer("size", 448, "output side")
_BATCH = flags.DEFINE_integer("batch", 4, "pipeline batch size")
_RECORDS = flags.DEFINE_integer("records", 10_000, "data set size the clips are tiled to")
_READ = flags.DEFINE_integer("read", 400, "videos read from the pipeline per timed run")
_RUNS = flags.DEFINE_integer("runs", 5, "timed runs of each reader")
_WORKERS = flags.DEFINE_integer("workers", 0, "Grain worker processes (0: in-process)")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/vqathinker_data_bench", "clips and data sets")
_OUT = flags.DEFINE_string("out", "", "also write the JSON here")


def _evict(paths) -> None:
  """Drops ``paths`` from the page cache (clean pages; they are written and synced)."""
  for p in paths:
    fd = os.open(p, os.O_RDONLY)
    try:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def _cold_read_rate(source, frames, size):
  """Every distinct record of ``source`` read once, as the pipeline reads one (random
  access + TFDS decoding), in a shuffled order: records per second."""
  order = np.random.default_rng(0).permutation(len(source))
  start = time.perf_counter()
  for i in order:
    assert source[int(i)]["frames"].shape == (frames, size, size, 3)
  return len(source) / (time.perf_counter() - start)


def _make_clips(videos_dir, count, num_frames, height, width):
  """Clips once per setting (kept in workdir); 48 distinct noisy frames loop for speed."""
  os.makedirs(videos_dir, exist_ok=True)
  rng = np.random.default_rng(0)
  paths = []
  for i in range(count):
    path = os.path.join(videos_dir, f"clip_{i:03d}.mp4")
    paths.append(path)
    if os.path.exists(path):
      continue
    base = synthetic.render(np.arange(48.0) * (1 + i % 3), height, width, rng)
    base = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    synthetic.encode(path, base[np.arange(num_frames) % 48], crf=20 + i % 8, fps=30)
  labels_path = os.path.join(videos_dir, "labels.json")
  with open(labels_path, "w") as f:
    json.dump({"annotations": [{"image_id": os.path.basename(p), "score": str(1 + i % 5)}
                               for i, p in enumerate(paths)]}, f)
  return labels_path, paths


def _decoding_rate(paths, frames, size):
  start = time.perf_counter()
  for p in paths:
    decode.decode(p, frames, size)
  return len(paths) / (time.perf_counter() - start)


class _Tiled:
  """`source` repeated to `length` records: a data set of realistic size for the shuffle.

  Grain's index shuffle costs ~3 ms per record on a data set of 8 (cycle walking) but
  ~4 us on one of 28k; a handful of clips would otherwise time the shuffle, not the reads.
  """

  def __init__(self, source, length):
    self._source, self._length = source, length

  def __len__(self):
    return self._length

  def __getitem__(self, index):
    return self._source[index % len(self._source)]


def _pipeline_rate(source, frames, size, seed):
  ds = pipeline.dataset(source, batch_size=_BATCH.value, seed=seed, worker_count=_WORKERS.value)
  it = iter(ds)
  try:
    next(it)  # worker start-up is a one-off, not throughput
    start = time.perf_counter()
    videos = 0
    while videos < _READ.value:
      b = next(it)
      assert b["frames"].shape[1:] == (frames, size, size, 3)
      videos += b["frames"].shape[0]
    return videos / (time.perf_counter() - start)
  finally:
    if hasattr(it, "close"):
      it.close()


def main(argv):
  del argv
  setting = f"{_VIDEOS.value}x{_CLIP_FRAMES.value}x{_CLIP_HEIGHT.value}x{_CLIP_WIDTH.value}"
  videos_dir = os.path.join(_WORKDIR.value, f"clips_{setting}")
  labels_path, paths = _make_clips(videos_dir, _VIDEOS.value, _CLIP_FRAMES.value,
                                   _CLIP_HEIGHT.value, _CLIP_WIDTH.value)
  t, s = _FRAMES.value, _SIZE.value
  variants = {}
  for compress in (True, False):
    data_dir = os.path.join(_WORKDIR.value, f"data_{setting}_{'zstd' if compress else 'raw'}")
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
      report = builder.build("bench", labels_path, videos_dir, data_dir, t, s,
                             workers=os.cpu_count(), split="train", compress=compress,
                             progress=False)
    records = glob.glob(os.path.join(report["dataset_dir"], "*.array_record-*"))
    source = pipeline.data_source(data_dir, "bench", "train", t, s)
    variants["zstd" if compress else "uncompressed"] = dict(
        source=_Tiled(source, _RECORDS.value), untiled=source, files=records,
        bytes=round(sum(map(os.path.getsize, records)) / report["ok"]), rates=[], cold=[])

  load_before = [round(x, 2) for x in os.getloadavg()]
  decode_rates, decode_cold = [], []
  for run in range(_RUNS.value):
    decode_rates.append(_decoding_rate(paths, t, s))
    for v in variants.values():
      v["rates"].append(_pipeline_rate(v["source"], t, s, run))
    _evict(paths)
    decode_cold.append(_decoding_rate(paths, t, s))
    for v in variants.values():
      _evict(v["files"])
      v["cold"].append(_cold_read_rate(v["untiled"], t, s))
  otf, otf_cold = statistics.median(decode_rates), statistics.median(decode_cold)

  def spread(rates):
    q1, _, q3 = (statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1
                 else rates * 3)
    return [round(q1, 2), round(q3, 2)]

  out = dict(
      **_timing.provenance(),
      load_average={"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
      clips=len(paths), clip_frames=_CLIP_FRAMES.value,
      clip_size=[_CLIP_HEIGHT.value, _CLIP_WIDTH.value], frames=t, size=s, batch=_BATCH.value,
      grain_workers=_WORKERS.value, runs=_RUNS.value,
      bytes_per_source_video=round(sum(map(os.path.getsize, paths)) / len(paths)),
      on_the_fly=dict(videos_per_s=round(otf, 2), frames_per_s=round(otf * t, 1),
                      quartiles=spread(decode_rates), runs=[round(r, 2) for r in decode_rates]),
      on_the_fly_cold=dict(videos_per_s=round(otf_cold, 2), quartiles=spread(decode_cold),
                           runs=[round(r, 2) for r in decode_cold]))
  for name, v in variants.items():
    rate, cold = statistics.median(v["rates"]), statistics.median(v["cold"])
    out[f"pipeline_{name}"] = dict(
        videos_per_s=round(rate, 1), frames_per_s=round(rate * t, 1),
        speedup=round(rate / otf, 1), bytes_per_stored_video=v["bytes"],
        quartiles=spread(v["rates"]), runs=[round(r, 1) for r in v["rates"]])
    out[f"pipeline_{name}_cold"] = dict(
        videos_per_s=round(cold, 1), speedup=round(cold / otf_cold, 1),
        quartiles=spread(v["cold"]), runs=[round(r, 1) for r in v["cold"]])
  text = json.dumps(out, indent=1)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  sys.exit(app.run(main))
