"""The paper's second claim, distortion attribution and quality description, measured two
ways beside SRCC/PLCC (`evaluate.run`):

- **Multiple-choice quality questions** (data sets built by `data_pipelines/qa.py`): greedy
  answers through `predict.generate_texts` (the same rollout as the scores), the first
  `<answer>` read as an option (`qa.match_option`: "B", "B.", "(B)", "B. text" or the
  option's text; anything else is a failure, counted wrong), accuracy overall and per
  question type -> `{name}_qa.json`.
- **Attribution in the reasoning** (sets with distortion labels: the synthetic set): how
  often the `<think>` text of a scored clip names one of its distortions (`KEYWORDS`), and
  how often a pristine clip's names any -> `{name}_attribution.json`.

Legend: T frames, H/W pixels.
"""

from __future__ import annotations

import collections
import json
import re
import time
from typing import Mapping, Sequence

from etils import epath
import jax
import numpy as np

from data_pipelines import qa as qa_lib
from data_pipelines import synthetic
from vqathinker_jax import factory
from vqathinker_jax.eval import predict, report
from vqathinker_jax.text import tokenizer as tok_lib

SYNTHETIC_QA = factory.SYNTHETIC + "_qa"  # config.eval.qa_sets name generated from the synthetic set

# ----------------------------------------------------------------------------- QA

def open_qa_set(data_dir, name: str, frames: int, size: int, honour_rotation: bool = True):
  """The TFDS source of QA set ``name``; a clear error naming the config field if absent."""
  where = epath.Path(qa_lib.dataset_dir(data_dir, name, frames, size, honour_rotation))
  if not (where / "dataset_info.json").exists():
    raise FileNotFoundError(
        f"QA set {name!r} (config.eval.qa_sets) is not built at {frames} frames x {size} px: no "
        f"{where} under config.data.data_dir={str(data_dir)!r}; build it with: python -m "
        f"data_pipelines.qa --name {name} --questions QUESTIONS.json --videos VIDEO_DIR "
        f"--data_dir {data_dir} --frames {frames} --size {size}")
  return qa_lib.data_source(data_dir, name, frames, size, honour_rotation)


def parse_choice(text: str | None, options: Sequence[str]) -> int | None:
  """The option index the FIRST `<answer>` of ``text`` designates (`qa.match_option`), or
  None: no answer block, or a content that is no option (a failure, scored wrong)."""
  m = report.ANSWER_RE.search(text or "")
  return None if m is None else qa_lib.match_option(m.group(1), options)


def qa_metrics(answers: Sequence[int], predictions: Sequence[int | None],
               types: Sequence[str], num_options: Sequence[int]) -> dict:
  """Accuracy (a failure, None, counts wrong) overall and per type, with counts; `chance`
  is the expected accuracy of a uniform guess (mean of 1 / options)."""
  n = len(answers)

  def block(idx):
    k = len(idx)
    correct = sum(predictions[i] == answers[i] for i in idx)
    fails = sum(predictions[i] is None for i in idx)
    return dict(n=k, correct=int(correct), accuracy=correct / k if k else float("nan"),
                n_parse_fail=int(fails), parse_failure_rate=fails / k if k else float("nan"),
                chance=float(np.mean([1 / num_options[i] for i in idx])) if k else float("nan"))

  by_type = collections.defaultdict(list)
  for i, t in enumerate(types):
    by_type[t].append(i)
  out = block(range(n))
  out["per_type"] = {t: block(idx) for t, idx in sorted(by_type.items())}
  return out


def _str(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


def evaluate_qa_source(model, tokenizer: tok_lib.Tokenizer, source, name: str, *, out_dir,
                       batch_size: int, max_new_tokens: int, prompt_layout: str = "train",
                       train_selection: bool = False, max_videos: int = 0) -> dict:
  """Answers the questions of ``source`` in order (the first ``max_videos`` if > 0) and
  writes `{out_dir}/{name}_qa.json` (process 0; every process generates): metrics (see
  `qa_metrics`) and every question with its options, answer, prediction and text.

  Returns {dataset, metrics, n, frames, size, seconds, questions_per_s, json_path}.
  """
  n = len(source) if max_videos <= 0 else min(len(source), max_videos)
  if n < 1:
    raise ValueError(f"QA set {name!r} has no question")
  first = source[0]
  T, H, W, _ = np.asarray(first["frames"]).shape
  if H != W:
    raise ValueError(f"QA set {name!r}: frames are {H}x{W}; expected square frames")
  cfg = model.cfg
  base = predict.prompt_config(cfg, T, H, prompt_layout)
  # First the text of every question (records are read twice, frames only on the second
  # pass): the longest prompt fixes one padded length, so the rollout compiles once.
  items = []
  for i in range(n):
    r = first if i == 0 else source[i]
    options = [_str(o) for o in np.asarray(r["options"]).tolist()]
    items.append(dict(question_id=_str(r["question_id"]), video_id=_str(r["video_id"]),
                      type=_str(r["type"]), question=_str(r["question"]), options=options,
                      answer=int(r["answer"])))
  ids = [tok_lib.prompt_ids(tokenizer, tok_lib.qa_prompt(base, q["question"], q["options"]))
         for q in items]
  del first

  def videos():
    for i in range(n):
      yield np.asarray(source[i]["frames"]), ids[i]

  t0 = time.perf_counter()
  texts = predict.generate_texts(model, tokenizer, videos(), prompt_len=max(map(len, ids)),
                                 batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 train_selection=train_selection)
  seconds = time.perf_counter() - t0
  pred = [parse_choice(t, q["options"]) for t, q in zip(texts, items)]
  m = qa_metrics([q["answer"] for q in items], pred, [q["type"] for q in items],
                 [len(q["options"]) for q in items])
  out = epath.Path(out_dir)
  json_path = out / f"{report._safe_name(name)}_qa.json"  # pylint: disable=protected-access
  if jax.process_index() == 0:
    rows = [dict(q, answer=qa_lib.letter(q["answer"]), answer_text=q["options"][q["answer"]],
                 prediction=None if p is None else qa_lib.letter(p), correct=p == q["answer"],
                 text=t) for q, p, t in zip(items, pred, texts)]
    out.mkdir(parents=True, exist_ok=True)
    report.write_atomic(json_path, json.dumps(
        report._jsonable(dict(dataset=name, metrics=m, questions=rows)),  # pylint: disable=protected-access
        indent=1, ensure_ascii=False, allow_nan=False))
  return report._jsonable(dict(  # pylint: disable=protected-access
      dataset=name, metrics=m, n=n, frames=int(T), size=int(H), seconds=round(seconds, 3),
      questions_per_s=round(n / seconds, 3), json_path=str(json_path)))


# ----------------------------------------------------------------------------- attribution

_TEMPORAL = (r"stutter\w*", r"freez\w*", r"frozen", r"drop\w*", r"jerk\w*", r"judder\w*")
# Words that name each synthetic.WEIGHTS kind (regexes, whole words, any case). The three
# temporal kinds share theirs: a viewer cannot tell held frames from skipped ones by name.
KEYWORDS = {
    "blur": (r"blur\w*", r"soft(?:ness)?", r"out[- ]of[- ]focus", r"defocus\w*"),
    "noise": (r"nois\w*", r"grain\w*"),
    "compression": (r"compress\w*", r"block(?:y|iness|ing)", r"macroblock\w*", r"artifact\w*",
                    r"artefact\w*"),
    "exposure": (r"(?:over|under)?[- ]?expos\w*", r"dark\w*", r"bright\w*"),
    "colour_cast": (r"colou?r(?:ed)?[- ]cast\w*", r"tint\w*"),
    "stutter": _TEMPORAL,
    "frame_drop": _TEMPORAL,
    "judder": _TEMPORAL,
}
_KEYWORD_RE = {k: re.compile(r"\b(?:" + "|".join(v) + r")\b", re.IGNORECASE)
               for k, v in KEYWORDS.items()}
_THINK_RE = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def think_text(text: str | None) -> str | None:
  """The first `<think>` block's content (to the end if unclosed: cut by the token limit),
  or None when there is none."""
  m = _THINK_RE.search(text or "")
  return None if m is None else m.group(1)


def named_kinds(text: str | None) -> set[str]:
  """The distortion kinds whose keywords occur in ``text``. Plain keyword matching: a
  negation ("no blur") counts as naming it."""
  return {k for k, r in _KEYWORD_RE.items() if r.search(text or "")}


def attribution(texts: Mapping[str, str], distortions: Mapping[str, Mapping[str, int]]) -> dict:
  """How the `<think>` text of each clip of ``texts`` ({video_id: generated text}) names
  the distortions of ``distortions`` ({video_id: {kind: level}}).

  Returns {metrics, videos}. metrics: `attribution_rate` (distorted clips whose reasoning
  names one of their active kinds), `attribution_rate_strongest` (names the strongest,
  `qa.strongest`), `false_mention_rate` (pristine clips naming any kind), their counts,
  `n_no_think` (no `<think>` block: nothing named), and per kind the rate at which it is
  named when active and when not (a keyword that fires on every text shows up there).
  """
  unknown = sorted(set(texts) - set(distortions))
  if unknown:
    raise ValueError(f"no distortion levels for {unknown[:5]} ({len(unknown)} clips)")
  rows, per_kind = [], {k: [0, 0, 0, 0] for k in synthetic.WEIGHTS}  # active n/named, off n/named
  for vid, text in texts.items():
    levels = {k: int(distortions[vid].get(k, 0)) for k in synthetic.WEIGHTS}
    active = [k for k, v in levels.items() if v > 0]
    think = think_text(text)
    named = named_kinds(think)
    top = qa_lib.strongest(levels)
    for k in synthetic.WEIGHTS:
      c = per_kind[k]
      c[0 if k in active else 2] += 1
      c[1 if k in active else 3] += k in named
    rows.append(dict(video_id=vid, active={k: levels[k] for k in active}, strongest=top,
                     named=sorted(named), has_think=think is not None,
                     hit=bool(set(active) & named) if active else None,
                     hit_strongest=(top in named) if top else None,
                     false_mention=bool(named) if not active else None))
  distorted = [r for r in rows if r["active"]]
  pristine = [r for r in rows if not r["active"]]

  def rate(k, n):
    return k / n if n else float("nan")

  hits = sum(r["hit"] for r in distorted)
  top_hits = sum(r["hit_strongest"] for r in distorted)
  false = sum(r["false_mention"] for r in pristine)
  m = dict(n=len(rows), n_distorted=len(distorted), n_pristine=len(pristine),
           n_no_think=sum(not r["has_think"] for r in rows),
           attributed=hits, attribution_rate=rate(hits, len(distorted)),
           attributed_strongest=top_hits,
           attribution_rate_strongest=rate(top_hits, len(distorted)),
           false_mentions=false, false_mention_rate=rate(false, len(pristine)),
           per_kind={k: dict(n_active=a, named_active=na, rate_active=rate(na, a), n_inactive=o,
                             named_inactive=no, rate_inactive=rate(no, o))
                     for k, (a, na, o, no) in per_kind.items()})
  return dict(metrics=m, videos=rows)


def synthetic_distortions_path(config, workdir) -> epath.Path:
  """Where `factory.ensure_synthetic` renders the synthetic set's distortions.json."""
  return epath.Path(factory.data_dir(config, workdir)).parent / "synthetic_videos" / \
      "distortions.json"


def attribution_reports(config, workdir, reports: Mapping[str, dict], out_dir) -> dict:
  """{name: {metrics, json_path}} for the evaluated sets of ``reports`` (evaluate_source's
  dicts) that have distortion labels (the synthetic set, when config.data.synthetic is
  on); writes `{name}_attribution.json`. Process 0 only: it alone wrote the reasoning."""
  out = {}
  if jax.process_index() != 0 or not config.data.synthetic.enabled:
    return out
  labels_path = synthetic_distortions_path(config, workdir)
  for name, rep in reports.items():
    if name != factory.SYNTHETIC or not labels_path.exists():
      continue
    lines = epath.Path(rep["reasoning_path"]).read_text(encoding="utf-8").splitlines()
    texts = {x["video_id"]: x["text"] for x in map(json.loads, filter(None, lines))}
    res = attribution(texts, json.loads(labels_path.read_text()))
    path = epath.Path(out_dir) / f"{report._safe_name(name)}_attribution.json"  # pylint: disable=protected-access
    report.write_atomic(path, json.dumps(report._jsonable(dict(dataset=name, **res)),  # pylint: disable=protected-access
                                         indent=1, ensure_ascii=False, allow_nan=False))
    out[name] = report._jsonable(dict(metrics=res["metrics"], json_path=str(path)))  # pylint: disable=protected-access
  return out


# ----------------------------------------------------------------------------- eval mode

def qa_set_names(config) -> list[str]:
  return [s.strip() for s in config.eval.qa_sets.split(",") if s.strip()]


def open_qa_sets(config, workdir, data_dir) -> dict:
  """{name: source} for config.eval.qa_sets, each opened (the synthetic one generated and
  built first when config.data.synthetic is on) before anything is generated."""
  e, names = config.eval, qa_set_names(config)
  if config.data.synthetic.enabled and SYNTHETIC_QA in names:
    factory.ensure_synthetic_qa(config, workdir, e.frames, e.size, name=SYNTHETIC_QA)
  return {n: open_qa_set(data_dir, n, e.frames, e.size, config.data.honour_rotation)
          for n in names}


def run_qa(model, tokenizer, sources: Mapping, config, out_dir) -> dict:
  """evaluate_qa_source for each opened QA set with the config.eval settings."""
  e = config.eval
  return {n: evaluate_qa_source(model, tokenizer, s, n, out_dir=out_dir, batch_size=e.batch_size,
                                max_new_tokens=e.max_new_tokens, prompt_layout=e.prompt_layout,
                                train_selection=e.train_selection, max_videos=e.max_videos)
          for n, s in sources.items()}


def summary_table(qa: Mapping[str, dict], attr: Mapping[str, dict]) -> str:
  """The QA accuracies and attribution rates, one line per set (for `evaluate.run`)."""

  def pct(v):
    return "nan" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"

  lines = []
  if qa:
    w = max(len("QA set"), *map(len, qa))
    lines.append(f"{'QA set':<{w}} {'n':>6} {'acc%':>7} {'chance%':>7} {'fail%':>7}  per type acc%")
    for n, r in qa.items():
      m = r["metrics"]
      types = ", ".join(f"{t} {pct(b['accuracy'])} ({b['n']})" for t, b in m["per_type"].items())
      lines.append(f"{n:<{w}} {m['n']:>6} {pct(m['accuracy']):>7} {pct(m['chance']):>7} "
                   f"{pct(m['parse_failure_rate']):>7}  {types}")
  if attr:
    w = max(len("attribution"), *map(len, attr))
    lines.append(f"{'attribution':<{w}} {'n_dist':>6} {'named%':>7} {'top%':>7} {'n_pris':>6} "
                 f"{'false%':>7}")
    for n, r in attr.items():
      m = r["metrics"]
      lines.append(f"{n:<{w}} {m['n_distorted']:>6} {pct(m['attribution_rate']):>7} "
                   f"{pct(m['attribution_rate_strongest']):>7} {m['n_pristine']:>6} "
                   f"{pct(m['false_mention_rate']):>7}")
  return "\n".join(lines)
