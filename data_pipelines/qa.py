"""Multiple-choice video-quality questions (Q-Bench-Video / VQA²-style) as a TFDS set.

Legend: T = frames per video, S = output side (square), 3 = RGB channels (uint8).

A question file is a JSON list, one object per question:

  {"video": "x.mp4", "question": "Is the video blurry?", "options": ["Yes", "No"],
   "answer": "No", "type": "blur", "id": "q17"}

`answer` is the correct option's text or its letter ("B", "B.", "(B)"); `type` (a string
or number; "untyped" if absent) groups the accuracy; `id` (default: the row index) names
the question in the outputs. Q-Bench's own keys are read too (`candidates` for options,
`correct_ans` for answer, `video_path`/`img_path` for video). `build` decodes each video
once, like `builder.build` (same frame sampling, T×S, decode cache, file checks), and
writes one record per question, in file order, to `data_dir/video_qa/{name}_{T}x{S}/VERSION`
(split "test"). A bad row (malformed, answer not among the options, missing or undecodable
video) is skipped with a warning naming the row and why, and listed in
`qa_build_report.json`; the build fails only if no question is left.

`synthetic_questions` turns the synthetic set's `distortions.json` into such a file: "Which
distortion is most visible in this video?", answered by the clip's strongest distortion.

  python -m data_pipelines.qa --name my_qa --questions FILE --videos DIR --data_dir OUT \
      [--frames 12 --size 560 --workers 2 --overwrite --nohonour_rotation]
  python -m data_pipelines.qa --name synthetic_qa --distortions DIR/distortions.json \
      --questions OUT_FILE --videos DIR/videos --data_dir OUT   # writes OUT_FILE, then builds
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import zlib
from typing import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import builder as builder_lib
from data_pipelines import labels as labels_lib
from data_pipelines import synthetic

VERSION = "1.0.0"
BUILDER_NAME = "video_qa"
SPLIT = "test"  # every question: QA sets are test sets
REPORT_NAME = "qa_build_report.json"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
UNTYPED = "untyped"
# The prompt's image placeholder (text/tokenizer.py): inside a question it would take an
# image slot, so such rows are rejected here rather than failing the evaluation.
IMAGE_PLACEHOLDER = "<image>"
# Public benchmarks' spellings of our keys, first match wins.
KEYS = dict(video=("video", "video_path", "img_path"), question=("question",),
            options=("options", "candidates"), answer=("answer", "correct_ans"),
            type=("type",), id=("id", "question_id"))
# Row problems beside labels.py's file ones (missing_file, undecodable, ...).
MALFORMED = "malformed"
ANSWER_NOT_IN_OPTIONS = "answer_not_in_options"
DUPLICATE_ID = "duplicate_id"

log = logging.getLogger(__name__)


class BuildError(builder_lib.BuildError):
  """No question could be used; the message summarises why."""


@dataclasses.dataclass(frozen=True)
class Question:
  row: int                  # index in the question file
  qid: str
  video: str                # path relative to the video folder
  question: str
  options: tuple[str, ...]
  answer: int               # index into options
  type: str


@dataclasses.dataclass(frozen=True)
class Skipped:
  row: int
  video: str
  kind: str
  detail: str


# ----------------------------------------------------------------------------- options

def letter(index: int) -> str:
  return LETTERS[index]


def _norm(text: str) -> str:
  # Case, inner spacing and a closing full stop do not make another option.
  return " ".join(str(text).split()).casefold().rstrip(".").strip()


_LETTER_RE = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
_LETTER_TEXT_RE = re.compile(r"\(?([A-Za-z])\)?[.:)]?\s+(.+)", re.DOTALL)


def match_option(text: str, options: Sequence[str]) -> int | None:
  """The option ``text`` designates, else None: the option's own text (case, spacing and
  a final full stop ignored), its letter ("B", "b", "B.", "(B)", "B)", "B:"), or the
  letter followed by that same option's text ("B. Blurry"). A letter past the last
  option, or a letter with another option's text, designates nothing."""
  s = str(text).strip()
  if not s:
    return None
  by_text = [i for i, o in enumerate(options) if _norm(o) == _norm(s)]
  if len(by_text) == 1:
    return by_text[0]
  m = _LETTER_RE.fullmatch(s)
  if m:
    i = LETTERS.index(m.group(1).upper())
    return i if i < len(options) else None
  m = _LETTER_TEXT_RE.fullmatch(s)
  if m:
    i = LETTERS.index(m.group(1).upper())
    if i < len(options) and _norm(m.group(2)) == _norm(options[i]):
      return i
  return None


# ----------------------------------------------------------------------------- reading

def _get(row: Mapping, key: str):
  return next((row[k] for k in KEYS[key] if k in row), None)


def _video_problem(video) -> str | None:
  if not isinstance(video, str) or not video.strip():
    return "no 'video' (the file name, relative to the video folder)"
  video = video.strip()
  if os.path.isabs(video) or "\0" in video or re.match(r"[A-Za-z]:[\\/]", video):
    return f"video {video!r} is an absolute path (give it relative to the video folder)"
  if ".." in video.replace("\\", "/").split("/"):
    return f"video {video!r} escapes the video folder (..)"
  return None


def _text(v) -> str | None:
  """Option/question text: strings, and numbers written as text (some sets list 1-5)."""
  if isinstance(v, bool):
    return None
  if isinstance(v, (int, float)):
    return str(v)
  return v.strip() if isinstance(v, str) and v.strip() else None


def parse_row(row, n: int) -> Question | Skipped:
  """One question-file entry -> Question, or Skipped naming row ``n`` and what is wrong."""
  if not isinstance(row, dict):
    return Skipped(n, "", MALFORMED, f"row {n}: not an object but {type(row).__name__}")
  video = _get(row, "video")
  name = video.strip() if isinstance(video, str) else ""

  def bad(kind, why):
    return Skipped(n, name, kind, f"row {n} ({name or 'no video'}): {why}")

  why = _video_problem(video)
  if why:
    return bad(MALFORMED, why)
  question = _text(_get(row, "question"))
  if question is None:
    return bad(MALFORMED, "no 'question' text")
  options = _get(row, "options")
  if not isinstance(options, list):
    return bad(MALFORMED, f"'options' must be a list of option texts, got {options!r}")
  texts = [_text(o) for o in options]
  if None in texts or not 2 <= len(texts) <= len(LETTERS):
    return bad(MALFORMED, f"'options' must be 2-{len(LETTERS)} non-empty texts, got {options!r}")
  dup = [o for o, k in collections.Counter(map(_norm, texts)).items() if k > 1]
  if dup:
    return bad(MALFORMED, f"options repeat {dup} (the answer would be ambiguous)")
  if any(IMAGE_PLACEHOLDER in t for t in [question] + texts):
    return bad(MALFORMED, f"the text holds {IMAGE_PLACEHOLDER!r}, the prompt's image placeholder")
  answer = _get(row, "answer")
  index = match_option(answer, texts) if isinstance(answer, (str, int, float)) and \
      not isinstance(answer, bool) else None
  if index is None:
    return bad(ANSWER_NOT_IN_OPTIONS, f"answer {answer!r} is neither one of the options "
               f"{texts} nor a letter A-{letter(len(texts) - 1)}")
  qtype = row.get("type", UNTYPED)
  qtype = _text(qtype) if qtype is not None else UNTYPED
  if qtype is None:
    return bad(MALFORMED, f"'type' must be a string or number, got {row.get('type')!r}")
  qid = _get(row, "id")
  qid = str(n) if qid is None else _text(qid)
  if qid is None:
    return bad(MALFORMED, f"'id' must be a string or number, got {_get(row, 'id')!r}")
  return Question(n, qid, name, question, tuple(texts), index, qtype)


def read(path) -> tuple[list[Question], list[Skipped]]:
  """Parses a question file -> (questions, skipped). Bad rows never raise (the first of
  two rows with one id is kept); a file that is not a JSON list raises ValueError naming it."""
  path = str(path)
  try:
    with open(path, encoding="utf-8-sig") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, list):
    raise ValueError(f'{path}: expected a JSON list of {{"video", "question", "options", '
                     f'"answer", "type"}} objects, got {type(data).__name__}')
  questions, skipped, seen = [], [], set()
  for n, row in enumerate(data):
    q = parse_row(row, n)
    if isinstance(q, Question) and q.qid in seen:
      q = Skipped(n, q.video, DUPLICATE_ID, f"row {n} ({q.video}): duplicate id {q.qid!r} "
                  "(first occurrence kept)")
    if isinstance(q, Skipped):
      skipped.append(q)
      continue
    seen.add(q.qid)
    questions.append(q)
  return questions, skipped


# ----------------------------------------------------------------------------- TFDS

def tfds_name(name, frames, size, honour_rotation=True):
  """The TFDS name (`video_qa/config`) of QA set `name` at `frames` x `size`² (the
  builder's `_norot` suffix when built without honouring rotation metadata)."""
  suffix = "" if honour_rotation else builder_lib.NO_ROTATION_SUFFIX
  return f"{BUILDER_NAME}/{name}_{frames}x{size}{suffix}"


def data_source(data_dir, name, frames, size, honour_rotation=True):
  """The random-access TFDS source of QA set `name` (its one split, in file order)."""
  return tfds.data_source(tfds_name(name, frames, size, honour_rotation), split=SPLIT,
                          data_dir=str(data_dir))


def dataset_dir(data_dir, name, frames, size, honour_rotation=True) -> str:
  return os.path.join(str(data_dir), tfds_name(name, frames, size, honour_rotation), VERSION)


class VideoQAConfig(tfds.core.BuilderConfig):
  """One question set at one sampling."""

  def __init__(self, *, set_name, frames, size, honour_rotation=True, **kwargs):
    super().__init__(name=tfds_name(set_name, frames, size, honour_rotation).split("/")[1],
                     version=VERSION, **kwargs)
    self.set_name = set_name
    self.frames = frames
    self.size = size
    self.honour_rotation = honour_rotation


class VideoQA(tfds.core.GeneratorBasedBuilder):
  """Question file + video folder -> one record per question (frames, question, options)."""

  VERSION = tfds.core.Version(VERSION)
  code_path = None  # nothing is downloaded: no checksums file to look up

  def __init__(self, *, questions_path=None, videos_dir=None, workers=0, progress=True,
               **kwargs):
    self._questions_path = questions_path
    self._videos_dir = videos_dir
    self._workers = workers
    self._progress = progress
    super().__init__(**kwargs)
    self.cache_dir = os.path.join(os.path.dirname(self.data_dir), "decode_cache")
    self.report_path = os.path.join(os.path.dirname(self.data_dir), REPORT_NAME)
    self.report = None

  def _info(self):
    c = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description="Multiple-choice video quality questions over pre-decoded frames.",
        features=tfds.features.FeaturesDict({
            # BYTES: one raw blob, as builder.VideoQuality stores frames.
            "frames": tfds.features.Tensor(shape=(c.frames, c.size, c.size, 3), dtype=np.uint8,
                                           encoding=tfds.features.Encoding.BYTES),
            "question_id": tfds.features.Text(),
            "video_id": tfds.features.Text(),
            "question": tfds.features.Text(),
            "options": tfds.features.Tensor(shape=(None,), dtype=np.object_),  # texts, in order
            "answer": tfds.features.Scalar(dtype=np.int32),  # index into options
            "type": tfds.features.Text(),
            "short": tfds.features.Scalar(dtype=np.bool_),  # fewer source frames than T
            "repeated": tfds.features.Scalar(dtype=np.int32),  # undecodable slots filled
        }),
        metadata=tfds.core.MetadataDict(set_name=c.set_name, frames=c.frames, size=c.size,
                                        honour_rotation=c.honour_rotation),
        disable_shuffling=True,  # file order: outputs line up with the question file
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    questions, skipped = read(self._questions_path)
    rows = len(questions) + len(skipped)
    done = {}
    if questions:
      videos = list(dict.fromkeys(q.video for q in questions))
      # The builder's own decode path: same checks, sampling, cache and crash handling.
      # pylint: disable=protected-access
      jobs, bad = builder_lib._jobs([labels_lib.Label(v, 0.0) for v in videos], self._videos_dir,
                                    self.cache_dir, self.builder_config)
      done, failed, _ = builder_lib._decode_all(jobs, self._workers, self._progress)
      # pylint: enable=protected-access
      why = {p.video_id: p for p in bad + failed}
      for q in questions:
        if q.video in why:
          p = why[q.video]
          skipped.append(Skipped(q.row, q.video, p.kind, f"row {q.row} ({q.video}): {p.detail}"))
      questions = [q for q in questions if q.video in done]
    skipped.sort(key=lambda s: s.row)
    for s in skipped[:20]:
      log.warning("question skipped: %s", s.detail)
    if len(skipped) > 20:
      log.warning("... and %d more skipped questions (see %s)", len(skipped) - 20,
                  self.report_path)
    self.report = _report(self.builder_config, self._questions_path, self._videos_dir, rows,
                          questions, skipped)
    if not questions:
      raise BuildError(f"{self._questions_path}: no usable question in {rows} rows; first "
                       f"reasons: {[s.detail for s in skipped[:3]]}")
    return {SPLIT: self._generate_examples([(q, done[q.video]) for q in questions])}

  def _generate_examples(self, items):
    for q, cache_file in items:
      with np.load(cache_file) as z:
        meta = json.loads(str(z["meta"]))
        frames_TxSxSx3 = z["frames"]
      yield f"{q.row:08d}", dict(
          frames=frames_TxSxSx3, question_id=q.qid, video_id=q.video, question=q.question,
          options=np.asarray(q.options, dtype=object), answer=q.answer, type=q.type,
          short=meta["num_frames"] < self.builder_config.frames, repeated=meta["repeated"])


def _report(config, questions_path, videos_dir, rows, questions, skipped):
  return dict(
      name=config.set_name, tfds_name=tfds_name(config.set_name, config.frames, config.size,
                                                config.honour_rotation),
      frames=config.frames, size=config.size, honour_rotation=config.honour_rotation,
      questions_path=os.path.abspath(questions_path), videos_dir=os.path.abspath(videos_dir),
      question_rows=rows, ok=len(questions), videos=len({q.video for q in questions}),
      types=dict(sorted(collections.Counter(q.type for q in questions).items())),
      skipped_by_kind=dict(sorted(collections.Counter(s.kind for s in skipped).items())),
      skipped=[dataclasses.asdict(s) for s in skipped])


def fingerprint(name, questions, videos, frames, size, honour_rotation=True):
  """A hash of everything the set is a function of: question file, settings, video files."""
  h = hashlib.sha256()
  with open(questions, "rb") as f:
    h.update(f.read())
  h.update(json.dumps([VERSION, name, os.path.abspath(videos), frames, size,
                       bool(honour_rotation)]).encode())
  # File stats rather than contents, as builder.fingerprint.
  for video in sorted({q.video for q in read(questions)[0]}):
    try:
      st = os.stat(os.path.join(videos, video))
      h.update(f"{video}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    except (OSError, ValueError):
      h.update(f"{video}|-\n".encode())
  return h.hexdigest()


def build(name, questions, videos, data_dir, frames=6, size=448, *, workers=0, overwrite=False,
          honour_rotation=True, keep_cache=False, progress=True) -> dict:
  """Builds QA set `name` from a question file and a video folder; returns the report
  (`question_rows` = `ok` + len(`skipped`)), also written as qa_build_report.json beside
  the set. Reused when built from the same inputs unless `overwrite`. Raises BuildError
  (after writing the report) only if no question could be used."""
  builder_lib.check_inputs("question file", questions, videos, frames, size)
  labels_lib.benchmark(name)  # the same name rule as the MOS sets
  config = VideoQAConfig(set_name=name, frames=frames, size=size,
                         honour_rotation=bool(honour_rotation))
  b = VideoQA(questions_path=questions, videos_dir=videos, workers=workers, progress=progress,
              config=config, data_dir=str(data_dir), file_format="array_record")
  fp = fingerprint(name, questions, videos, frames, size, honour_rotation)
  return builder_lib.prepare(b, fp, data_dir, overwrite=overwrite, keep_cache=keep_cache)


def summary(report) -> str:
  """A few human lines: counts, then the skipped questions."""
  lines = [f"{report['name']}: {report['ok']} of {report['question_rows']} questions over "
           f"{report['videos']} videos written to {report.get('dataset_dir')}; types "
           f"{report['types']}"]
  if report["skipped"]:
    lines.append(f"skipped {len(report['skipped'])}: {report['skipped_by_kind']} (details in "
                 f"{REPORT_NAME}):")
    lines += [f"  {s['detail']}" for s in report["skipped"][:20]]
    if len(report["skipped"]) > 20:
      lines.append(f"  ... and {len(report['skipped']) - 20} more")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- synthetic

SYNTHETIC_QUESTION = "Which distortion is most visible in this video?"
SYNTHETIC_TYPE_PREFIX = "distortion:"  # type = prefix + the answer's kind (or "none")
NONE = "none"
# Option text per synthetic.WEIGHTS kind, worded as a viewer would name it.
OPTION_TEXT = {
    "blur": "blur (soft, out of focus)",
    "noise": "noise (grain)",
    "compression": "compression artifacts (blockiness)",
    "exposure": "bad exposure (too dark or too bright)",
    "colour_cast": "colour cast (a tint over the whole picture)",
    "stutter": "stutter (frozen frames)",
    "frame_drop": "frame drops (motion jumps ahead)",
    "judder": "judder (uneven, jerky motion)",
    NONE: "none (no visible distortion)",
}
MAX_OPTIONS = len(synthetic.WEIGHTS) + 1  # every kind and "none"


def strongest(levels: Mapping[str, int]) -> str | None:
  """The clip's strongest active distortion (highest level; a tie goes to the kind with
  the larger MOS weight, which costs more quality, then to synthetic.WEIGHTS order), or
  None for a pristine clip."""
  kinds = list(synthetic.WEIGHTS)
  active = [k for k in kinds if levels.get(k, 0) > 0]
  if not active:
    return None
  return max(active, key=lambda k: (levels[k], synthetic.WEIGHTS[k], -kinds.index(k)))


def synthetic_questions(distortions: Mapping[str, Mapping[str, int]], *, seed: int = 0,
                        num_options: int = 4, video_ids=None) -> list[dict]:
  """Questions in the public format for the clips of ``distortions`` ({video_id: {kind:
  level}}, synthetic.generate's distortions.json), restricted to ``video_ids`` if given, in
  sorted id order.

  The answer is `strongest`'s kind ("none" for a pristine clip). "none" is an option of
  every question; the other distractors are drawn from the kinds the clip does not have,
  so no other option is also right; then the options are shuffled. Up to ``num_options`` options (fewer when a clip has too few inactive kinds).
  Deterministic from (seed, video id): adding clips changes no other question.
  """
  if not 2 <= num_options <= MAX_OPTIONS:
    raise ValueError(f"num_options must be in [2, {MAX_OPTIONS}], got {num_options}")
  ids = sorted(distortions if video_ids is None else set(video_ids))
  missing = [v for v in ids if v not in distortions]
  if missing:
    raise ValueError(f"no distortion levels for {missing[:5]} ({len(missing)} clips)")
  out = []
  for vid in ids:
    levels = distortions[vid]
    unknown = sorted(set(levels) - set(synthetic.WEIGHTS))
    if unknown:
      raise ValueError(f"{vid}: unknown distortion kinds {unknown}")
    answer = strongest(levels) or NONE
    pool = [k for k in synthetic.WEIGHTS if levels.get(k, 0) == 0]
    rng = np.random.default_rng([seed, zlib.crc32(vid.encode())])
    # "none" in every question: were it offered to pristine clips alone, it would give
    # their answer away.
    kinds = [answer] if answer == NONE else [answer, NONE]
    k = min(num_options - len(kinds), len(pool))
    kinds += [pool[i] for i in rng.choice(len(pool), k, replace=False)]
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    out.append(dict(id=f"{vid}#distortion", video=vid, question=SYNTHETIC_QUESTION,
                    options=[OPTION_TEXT[x] for x in kinds], answer=OPTION_TEXT[answer],
                    type=SYNTHETIC_TYPE_PREFIX + answer))
  return out


def write_synthetic_questions(distortions_path, out_path, *, seed: int = 0, num_options: int = 4,
                              video_ids=None) -> str:
  """`synthetic_questions` of a distortions.json, written (atomically) to ``out_path``;
  left untouched when it already holds the same questions, so a build can be reused."""
  with open(distortions_path, encoding="utf-8") as f:
    distortions = json.load(f)
  text = json.dumps(synthetic_questions(distortions, seed=seed, num_options=num_options,
                                        video_ids=video_ids), indent=1)
  out_path = str(out_path)
  if os.path.exists(out_path):
    with open(out_path, encoding="utf-8") as f:
      if f.read() == text:
        return out_path
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  tmp = f"{out_path}.{os.getpid()}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, out_path)
  return out_path


# ----------------------------------------------------------------------------- CLI

def _define_flags():
  from absl import flags
  flags.DEFINE_string("name", None, "QA set name (lower-case letters, digits, _)")
  flags.DEFINE_string("questions", None, "question file (JSON list); written first with "
                      "--distortions")
  flags.DEFINE_string("videos", None, "folder the questions' videos are relative to")
  flags.DEFINE_string("data_dir", None, "output TFDS data_dir")
  flags.DEFINE_integer("frames", 6, "frames sampled per video (T)")
  flags.DEFINE_integer("size", 448, "output side in pixels (squash resize)")
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "decoding processes (0: in-process)")
  flags.DEFINE_bool("overwrite", False, "rebuild even if the set exists with these inputs")
  flags.DEFINE_bool("honour_rotation", True, "turn frames by the clips' rotation metadata")
  flags.DEFINE_string("distortions", None, "a synthetic set's distortions.json: write its "
                      "'which distortion' questions to --questions, then build")
  flags.DEFINE_integer("seed", 0, "with --distortions: the option draws' seed")
  flags.DEFINE_integer("num_options", 4, "with --distortions: options per question")


def main(argv):
  import sys
  from absl import app, flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    if f.distortions:
      write_synthetic_questions(f.distortions, f.questions, seed=f.seed,
                                num_options=f.num_options)
    report = build(f.name, f.questions, f.videos, f.data_dir, f.frames, f.size,
                   workers=f.workers, overwrite=f.overwrite, honour_rotation=f.honour_rotation)
  except (BuildError, FileNotFoundError, NotADirectoryError, ValueError) as e:
    sys.exit(f"qa build failed: {e}")
  print(summary(report) + (" (reused: inputs unchanged)" if report["reused"] else ""))


if __name__ == "__main__":
  from absl import app, flags
  _define_flags()
  flags.mark_flags_as_required(["name", "questions", "videos", "data_dir"])
  app.run(main)
