"""CLI: decode a labelled video folder into an ArrayRecord data set (see builder.build).

  python -m data_pipelines.prepare --name konvid_1k --labels FILE --videos DIR --data_dir OUT \
      [--frames 6 --size 448 --workers 2 --overwrite --mos_range lo,hi --split hash:0.2
       --nocompress --nohonour_rotation]

Prints a summary; the full list of skipped videos is in build_report.json next to the data
set. Exits non-zero only if no video could be used or the arguments are wrong.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

from data_pipelines import builder


def _define_flags():
  # Defined only when run as a script, so importing this module never clashes with a caller.
  flags.DEFINE_string("name", None, "benchmark name (see labels.BENCHMARKS) or any new name")
  flags.DEFINE_string("labels", None, 'label file: JSON {"annotations": [...]} or CSV video,mos')
  flags.DEFINE_string("videos", None, "folder the video ids are relative to")
  flags.DEFINE_string("data_dir", None, "output TFDS data_dir")
  flags.DEFINE_integer("frames", 6, "frames sampled per video (T)")
  flags.DEFINE_integer("size", 448, "output side in pixels (squash resize)")
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "decoding processes (0: in-process)")
  flags.DEFINE_bool("overwrite", False, "rebuild even if the data set exists with these inputs")
  flags.DEFINE_bool("compress", True, "zstd records; --nocompress: ~1.4x faster reads, 2-5x disk")
  flags.DEFINE_list("mos_range", None, "lo,hi MOS scale (default: per benchmark)")
  flags.DEFINE_string("split", None, "split rule train | test | hash:F (default: per benchmark)")
  flags.DEFINE_bool("honour_rotation", True, "turn frames by the clips' rotation metadata; "
                    "--nohonour_rotation: stored orientation, as the reference (set _norot)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    mos_range = [float(x) for x in f.mos_range] if f.mos_range else None
    report = builder.build(f.name, f.labels, f.videos, f.data_dir, f.frames, f.size,
                           workers=f.workers, overwrite=f.overwrite, mos_range=mos_range,
                           split=f.split, compress=f.compress,
                           honour_rotation=f.honour_rotation)
  except (builder.BuildError, FileNotFoundError, NotADirectoryError, ValueError) as e:
    sys.exit(f"prepare failed: {e}")
  print(builder.summary(report) + (" (reused: inputs unchanged)" if report["reused"] else ""))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["name", "labels", "videos", "data_dir"])
  app.run(main)
