"""TFDS builder (ArrayRecord, no TensorFlow): one record of pre-decoded frames per video.

Legend: T = frames per video, S = output side (square), 3 = RGB channels (uint8).

`build` decodes the videos in parallel into a per-video cache (so an interrupted build
resumes where it stopped), then TFDS writes the records. Each bad video or label is skipped
with a reason in a JSON report next to the data set; the build fails only if no video
succeeds. The data set lands in `data_dir/video_quality/{name}_{T}x{S}/VERSION`, so one
benchmark can be kept at several samplings (e.g. 6x448 for training, 12x560 for evaluation).
Built with `honour_rotation=False` (frames at their stored orientation, as the reference
reads them) it is `{name}_{T}x{S}_norot`: the two are never mistaken for each other.
"""

from __future__ import annotations

import collections
import concurrent.futures
import glob
import hashlib
import json
import multiprocessing
import os
import shutil

from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from data_pipelines import decode as decode_lib
from data_pipelines import labels as labels_lib

VERSION = "1.1.0"
BUILDER_NAME = "video_quality"
REPORT_NAME = "build_report.json"


class BuildError(RuntimeError):
  """No video could be used; the message summarises why."""


NO_ROTATION_SUFFIX = "_norot"  # config-name suffix of sets built with honour_rotation=False


def tfds_name(name, frames, size, honour_rotation=True):
  """The TFDS name (`builder/config`) of benchmark `name` sampled at `frames` x `size`²
  (`..._norot` when built without honouring rotation metadata)."""
  suffix = "" if honour_rotation else NO_ROTATION_SUFFIX
  return f"{BUILDER_NAME}/{name}_{frames}x{size}{suffix}"


class VideoQualityConfig(tfds.core.BuilderConfig):
  """One benchmark (labels.Benchmark: MOS scale, split rule) at one sampling."""

  def __init__(self, *, benchmark, frames, size, honour_rotation=True, **kwargs):
    super().__init__(name=tfds_name(benchmark.name, frames, size, honour_rotation).split("/")[1],
                     version=VERSION, **kwargs)
    self.benchmark = benchmark
    self.frames = frames
    self.size = size
    self.honour_rotation = honour_rotation


class VideoQuality(tfds.core.GeneratorBasedBuilder):
  """Generic label-file + video-folder builder; the config picks benchmark and sampling."""

  VERSION = tfds.core.Version(VERSION)
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Point manual_dir (or prepare --videos) at the video folder."
  # Nothing is downloaded, so no checksums file to look up next to the code.
  code_path = None

  def __init__(self, *, labels_path=None, videos_dir=None, workers=0, progress=True, **kwargs):
    self._labels_path = labels_path
    self._videos_dir = videos_dir
    self._workers = workers
    self._progress = progress
    super().__init__(**kwargs)
    # Beside the version folders: survives an interrupted build, shared by rebuilds.
    self.cache_dir = os.path.join(os.path.dirname(self.data_dir), "decode_cache")
    self.report_path = os.path.join(os.path.dirname(self.data_dir), REPORT_NAME)
    self.report = None

  def _info(self):
    c = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description="Pre-decoded video frames with quality labels (VQAThinker).",
        features=tfds.features.FeaturesDict({
            # BYTES: one raw blob. The default stores uint8 as an int64 varint list, which
            # is ~1.4x larger and ~20x slower to parse.
            "frames": tfds.features.Tensor(shape=(c.frames, c.size, c.size, 3), dtype=np.uint8,
                                           encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.Scalar(dtype=np.float32),  # MOS mapped to [1, 5]
            # Native scale; float32 because TFDS stores every float as float32.
            "mos": tfds.features.Scalar(dtype=np.float32),
            "video_id": tfds.features.Text(),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
            "fps": tfds.features.Scalar(dtype=np.float32),
            "height": tfds.features.Scalar(dtype=np.int32),  # displayed, after rotation
            "width": tfds.features.Scalar(dtype=np.int32),
            # The clip's display rotation; the frames show it turned unless the set was
            # built with honour_rotation=False (metadata, and the _norot name).
            "rotation": tfds.features.Scalar(dtype=np.int32),
            "short": tfds.features.Scalar(dtype=np.bool_),  # fewer source frames than T
            "repeated": tfds.features.Scalar(dtype=np.int32),  # undecodable slots filled
        }),
        metadata=tfds.core.MetadataDict(
            benchmark=c.benchmark.name, frames=c.frames, size=c.size,
            split_rule=c.benchmark.split, honour_rotation=c.honour_rotation),
    )

  def _split_generators(self, dl_manager):
    bench = self.builder_config.benchmark
    videos_dir = self._videos_dir or dl_manager.manual_dir
    labels, problems = labels_lib.read(self._labels_path)
    labels, out_of_range = labels_lib.check_range(bench, labels)
    problems += out_of_range
    rows = len(labels) + len(problems)
    if not labels:
      self.report = _report(bench, self.builder_config, None, rows, problems, {}, 0, videos_dir)
      raise BuildError(f"{self._labels_path}: no usable label in {rows} rows; "
                       f"first reasons: {[p.detail for p in problems[:3]]}")
    lo, hi = labels_lib.mos_range(bench, labels)
    jobs, bad = _jobs(labels, videos_dir, self.cache_dir, self.builder_config)
    problems += bad
    done, failed, cached = _decode_all(jobs, self._workers, self._progress)
    problems += failed
    self.info.metadata["mos_range"] = [lo, hi]
    splits = {}
    for label in labels:
      if label.video_id in done:
        item = (label, lo, hi, done[label.video_id])
        splits.setdefault(labels_lib.split_of(bench, label.video_id), []).append(item)
    self.report = _report(bench, self.builder_config, (lo, hi), rows, problems, splits, cached,
                          videos_dir)
    if not splits:
      raise BuildError(f"no video could be used out of {rows} label rows; first reasons: "
                       f"{[f'{p.video_id}: {p.detail}' for p in problems[:3]]}")
    return {name: self._generate_examples(items) for name, items in splits.items()}

  def _generate_examples(self, items):
    frames = self.builder_config.frames
    for label, lo, hi, cache_file in items:
      with np.load(cache_file) as z:
        meta = json.loads(str(z["meta"]))
        frames_TxSxSx3 = z["frames"]
      yield label.video_id, dict(
          frames=frames_TxSxSx3, label=labels_lib.normalise(label.mos, lo, hi), mos=label.mos,
          video_id=label.video_id, short=meta["num_frames"] < frames,
          **{k: meta[k] for k in ("num_frames", "fps", "height", "width", "rotation", "repeated")})


def _jobs(labels, videos_dir, cache_dir, config):
  """Decode jobs for labels whose file exists inside the video folder; problems for the rest."""
  root = os.path.abspath(videos_dir)
  jobs, problems = [], []
  for label in labels:
    # normpath, not realpath: folders of symlinked videos are common and fine.
    path = os.path.normpath(os.path.join(root, label.video_id))
    if not path.startswith(root + os.sep):
      problems.append(labels_lib.Problem(
          label.video_id, labels_lib.ESCAPES_FOLDER, "resolves outside the video folder"))
    elif not os.path.exists(path):
      problems.append(labels_lib.Problem(label.video_id, labels_lib.MISSING_FILE,
                                         f"missing file {path}"))
    elif not os.path.isfile(path):
      problems.append(labels_lib.Problem(label.video_id, labels_lib.NOT_A_FILE,
                                         f"not a regular file: {path}"))
    elif os.path.getsize(path) == 0:
      problems.append(labels_lib.Problem(label.video_id, labels_lib.ZERO_BYTES,
                                         f"zero-byte file {path}"))
    else:
      st = os.stat(path)
      key = (f"{VERSION}|{label.video_id}|{st.st_size}|{st.st_mtime_ns}|"
             f"{config.frames}|{config.size}")
      if not config.honour_rotation:  # only then: the default's cache keys stay as they were
        key += "|norot"
      cache_file = os.path.join(cache_dir, hashlib.sha1(key.encode()).hexdigest() + ".npz")
      jobs.append((label.video_id, path, cache_file, config.frames, config.size,
                   config.honour_rotation))
  return jobs, problems


def decode_to_cache(job):
  """Worker: decodes one video into its cache file -> (video_id, cache_file, problem, cached)."""
  video_id, path, cache_file, frames, size, honour_rotation = job
  if os.path.exists(cache_file):
    return video_id, cache_file, None, True
  try:
    d = decode_lib.decode(path, frames, size, honour_rotation=honour_rotation)
  except decode_lib.DecodeError as e:
    kind = labels_lib.NO_VIDEO_STREAM if e.no_video else labels_lib.UNDECODABLE
    return video_id, None, labels_lib.Problem(video_id, kind, str(e)), False
  except Exception as e:  # pylint: disable=broad-except  # one odd file must not stop a build
    return video_id, None, labels_lib.Problem(
        video_id, labels_lib.UNDECODABLE, f"{path}: {type(e).__name__}: {e}"), False
  meta = dict(num_frames=d.num_frames, fps=d.fps, height=d.height, width=d.width,
              rotation=d.rotation, repeated=d.repeated)
  os.makedirs(os.path.dirname(cache_file), exist_ok=True)
  tmp = f"{cache_file}.{os.getpid()}.tmp.npz"
  np.savez(tmp, frames=d.frames_TxHxWx3, meta=json.dumps(meta))
  os.replace(tmp, cache_file)  # atomic: an interrupted run never leaves a half file
  return video_id, cache_file, None, False


def _decode_all(jobs, workers, progress):
  done, failed, cached = {}, [], 0
  bar = tqdm.tqdm(total=len(jobs), desc="decode", disable=not progress)
  if workers > 0 and len(jobs) > 1:
    # spawn, not fork: the parent may hold JAX or FFmpeg threads.
    pool = concurrent.futures.ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"))
    futures = {pool.submit(decode_to_cache, job): job for job in jobs}
    results = []
    for future in concurrent.futures.as_completed(futures):
      try:
        results.append(future.result())
      except concurrent.futures.process.BrokenProcessPool:
        # A decoder crashed its process; every unfinished job fails with it. Finished
        # videos are cached, so a rerun with --workers 0 resumes and names the culprit.
        video_id = futures[future][0]
        results.append((video_id, None, labels_lib.Problem(
            video_id, labels_lib.WORKER_CRASHED,
            "a decoding process died while this video was pending; rerun to retry"), False))
      bar.update()
    pool.shutdown()
  else:
    results = []
    for job in jobs:
      results.append(decode_to_cache(job))
      bar.update()
  bar.close()
  for video_id, cache_file, problem, was_cached in results:
    if problem:
      failed.append(problem)
    else:
      done[video_id] = cache_file
      cached += was_cached
  return done, failed, cached


def _report(bench, config, scale, rows, problems, splits, cached, videos_dir):
  kinds = collections.Counter(p.kind for p in problems)
  return dict(
      name=bench.name,
      tfds_name=tfds_name(bench.name, config.frames, config.size, config.honour_rotation),
      frames=config.frames, size=config.size, honour_rotation=config.honour_rotation,
      mos_range=list(scale) if scale else None,
      split_rule=bench.split, videos_dir=os.path.abspath(videos_dir), label_rows=rows,
      ok=sum(len(v) for v in splits.values()),
      short=sum(1 for v in splits.values() for item in v if _is_short(item, config.frames)),
      reused_from_cache=cached, splits={k: len(v) for k, v in sorted(splits.items())},
      skipped_by_kind=dict(sorted(kinds.items())),
      skipped=[dict(video_id=p.video_id, kind=p.kind, detail=p.detail) for p in problems])


def _is_short(item, frames):
  with np.load(item[3]) as z:
    return json.loads(str(z["meta"]))["num_frames"] < frames


def _rewrite_uncompressed(dataset_dir):
  """Rewrites the ArrayRecord shards without compression, record for record, in place.

  TFDS always writes zstd; raw frames then cost a decompression on every read.
  """
  for path in sorted(glob.glob(os.path.join(dataset_dir, "*.array_record-*"))):
    reader = array_record_module.ArrayRecordReader(path)
    tmp = path + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1,uncompressed")
    for i in range(reader.num_records()):
      writer.write(reader.read([i])[0])
    writer.close()
    reader.close()
    os.replace(tmp, path)


def fingerprint(name, labels, videos, frames, size, bench, compress=True, honour_rotation=True):
  """A hash of everything the data set is a function of: label file, settings, video files."""
  h = hashlib.sha256()
  with open(labels, "rb") as f:
    h.update(f.read())
  settings = [VERSION, name, os.path.abspath(videos), frames, size, bench.mos_range, bench.split,
              compress]
  if not honour_rotation:  # only then: sets built before the switch existed stay reusable
    settings.append("norot")
  h.update(json.dumps(settings).encode())
  # File stats rather than contents: cheap, and a re-encoded or touched video counts as new.
  for label in labels_lib.read(labels)[0]:
    path = os.path.join(videos, label.video_id)
    try:
      st = os.stat(path)
      h.update(f"{label.video_id}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    except (OSError, ValueError):
      h.update(f"{label.video_id}|-\n".encode())
  return h.hexdigest()


def build(name, labels, videos, data_dir, frames=6, size=448, *, workers=0, overwrite=False,
          mos_range=None, split=None, compress=True, keep_cache=False, progress=True,
          honour_rotation=True):
  """Builds data set `name` from a label file and a video folder; returns the report dict.

  The report (`label_rows` = `ok` + len(`skipped`)) is also written as build_report.json
  next to the data set. A finished build with the same inputs is reused unless `overwrite`;
  changed inputs rebuild it. Raises BuildError (after writing the report) only if no video
  could be used. `mos_range`/`split` override the benchmark's defaults (labels.BENCHMARKS).
  compress=False stores the records raw: ~1.4x faster pipeline reads for 2-5x the disk.
  honour_rotation=False keeps frames at their stored orientation (decode.decode) and builds
  the `..._norot` set (tfds_name), beside the default one.
  """
  check_inputs("label file", labels, videos, frames, size)
  bench = labels_lib.benchmark(name, mos_range, split)
  config = VideoQualityConfig(benchmark=bench, frames=frames, size=size,
                              honour_rotation=bool(honour_rotation))
  b = VideoQuality(labels_path=labels, videos_dir=videos, workers=workers, progress=progress,
                   config=config, data_dir=data_dir, file_format="array_record")
  fp = fingerprint(name, labels, videos, frames, size, bench, compress, honour_rotation)
  return prepare(b, fp, data_dir, overwrite=overwrite, keep_cache=keep_cache, manual_dir=videos,
                 finish=None if compress else lambda b: _rewrite_uncompressed(b.data_dir),
                 compressed=compress)


def check_inputs(what: str, path, videos, frames: int, size: int) -> None:
  """The arguments every build here takes, checked before anything is written."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} not found: {path}")
  if not os.path.isdir(videos):
    raise NotADirectoryError(f"video folder not found: {videos}")
  if frames < 1 or size < 2:
    raise ValueError(f"need frames >= 1 and size >= 2, got {frames}, {size}")


def prepare(b, fp: str, data_dir, *, overwrite: bool, keep_cache: bool, manual_dir=None,
            finish=None, **report) -> dict:
  """Builds TFDS builder ``b`` (with a `report` dict, `report_path` and `cache_dir`) unless
  a finished build with fingerprint ``fp`` is there (and not ``overwrite``); ``finish(b)``
  runs after a build. The report (plus ``report``'s items) is written beside the set even
  when the build fails; the decode cache is removed unless ``keep_cache``. Returns the
  report with `reused`."""
  if b.is_prepared() and not overwrite and os.path.exists(b.report_path):
    with open(b.report_path) as f:
      old = json.load(f)
    if old.get("fingerprint") == fp:
      return dict(old, reused=True)
  mode = tfds.download.GenerateMode
  download_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir,
      download_mode=mode.FORCE_REDOWNLOAD if overwrite or b.is_prepared()
      else mode.REUSE_DATASET_IF_EXISTS)
  try:
    b.download_and_prepare(download_config=download_config)
    if finish is not None:
      finish(b)
  finally:
    if b.report is not None:
      b.report.update(fingerprint=fp, dataset_dir=b.data_dir,
                      data_dir=os.path.abspath(str(data_dir)), **report)
      os.makedirs(os.path.dirname(b.report_path), exist_ok=True)
      tmp = b.report_path + ".tmp"
      with open(tmp, "w") as f:
        json.dump(b.report, f, indent=1)
      os.replace(tmp, b.report_path)
  if not keep_cache:
    shutil.rmtree(b.cache_dir, ignore_errors=True)
  return dict(b.report, reused=False)


def summary(report):
  """A few human lines: counts, then skipped videos grouped by kind."""
  lines = [f"{report['name']}: {report['ok']} of {report['label_rows']} labelled videos written "
           f"{report['splits']} to {report.get('dataset_dir')}"
           + (f" ({report['short']} shorter than {report['frames']} frames)" if report.get("short")
              else "")]
  if report["skipped"]:
    lines.append(f"skipped {len(report['skipped'])}: {report['skipped_by_kind']} "
                 f"(details in {REPORT_NAME}):")
    lines += [f"  {s['video_id']}: {s['detail']}" for s in report["skipped"][:20]]
    if len(report["skipped"]) > 20:
      lines.append(f"  ... and {len(report['skipped']) - 20} more")
  return "\n".join(lines)
