"""Evaluation (docs/method.md §5): greedy generation over the built data sets, the first `<answer>`
parsed (`config.eval.parse`, fallback 3.0), SRCC/KRCC/PLCC (raw and 4-parameter
logistic)/RMSE against the native MOS and the parse-failure rate per data set (under each
parser).

Per data set, `{out_dir}/{name}.json` (metrics + every video), `{name}.png` (scatter and
logistic fit) and `{name}_reasoning.jsonl` (one line per video with its text);
`run` adds `summary.json` over all sets and `report.html` (html_report: a results browser
with plots, metrics and every video's frames and reasoning) under `workdir/eval/<tag>/`.

Legend: T frames, H/W pixels, S square frame side.
"""

from __future__ import annotations

import json
import time

from etils import epath
import jax
import numpy as np

from data_pipelines import builder, pipeline
from vqathinker_jax import factory
from vqathinker_jax.eval import correlation, html_report, predict, report
from vqathinker_jax.eval import understanding
from vqathinker_jax.text import tokenizer as tok_lib

# ----------------------------------------------------------------------------- data sets

def open_set(data_dir, name: str, split: str, frames: int, size: int,
             honour_rotation: bool = True):
  """The TFDS source of eval set ``name``; a clear error if it is not built.
  ``honour_rotation=False`` (config.data.honour_rotation) opens its `_norot` build."""
  data_dir = epath.Path(data_dir)  # a gs:// data_dir keeps its scheme
  tfds_name = builder.tfds_name(name, frames, size, honour_rotation)
  how = (f"build it with: python -m data_pipelines.prepare --name {name} --labels LABELS "
         f"--videos VIDEO_DIR --data_dir {data_dir} --frames {frames} --size {size}"
         + ("" if honour_rotation else " --nohonour_rotation"))
  dataset_dir = data_dir / tfds_name / builder.VERSION
  if not (dataset_dir / "dataset_info.json").exists():
    raise FileNotFoundError(
        f"eval set {name!r} (config.eval.sets) is not built at {frames} frames x {size} px: no "
        f"{dataset_dir} under config.data.data_dir={str(data_dir)!r}; {how}")
  info = json.loads((dataset_dir / "dataset_info.json").read_text())
  splits = sorted(sp["name"] for sp in info.get("splits", []))
  if split not in splits:  # e.g. a hash split that left it empty
    raise FileNotFoundError(
        f"eval set {name!r} (config.eval.sets) has no split {split!r} (config.eval.split) in "
        f"{dataset_dir}; it has {splits}")
  return pipeline.data_source(str(data_dir), name, split, frames, size, honour_rotation)


# ----------------------------------------------------------------------------- evaluation

def _text(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


def _f32(v) -> float:
  # The shortest decimal that round-trips the stored float32: the label file's 62.4, not
  # 62.400001525878906.
  return float(str(np.float32(v)))


def evaluate_source(model, tokenizer: tok_lib.Tokenizer, source, name: str, *, out_dir,
                    batch_size: int, max_new_tokens: int, prompt_layout: str = "train",
                    train_selection: bool = False, max_videos: int = 0,
                    parse: str = "lenient", thumbnails: dict | None = None) -> dict:
  """Scores the records of ``source`` in order (the first ``max_videos`` if > 0) and writes
  the report, plot and reasoning lines (process 0 only; every process generates).
  ``thumbnails``: if a dict, gets {video_id: html_report.frame_strip JPEG} (for report.html).

  Returns {dataset, metrics (eval_report's + `rmse_label`: RMSE against the [1, 5]
  labels), n, frames, size, seconds (generation), videos_per_s, json_path, png_path,
  reasoning_path}.
  """
  n = len(source) if max_videos <= 0 else min(len(source), max_videos)
  if n < correlation.MIN_POINTS:
    raise ValueError(f"eval set {name!r}: {n} videos; the correlations need at least "
                     f"{correlation.MIN_POINTS}")
  first = source[0]
  T, H, W, _ = np.asarray(first["frames"]).shape
  if H != W:
    raise ValueError(f"eval set {name!r}: frames are {H}x{W}; expected square frames")
  cfg = model.cfg
  prompt = predict.prompt_config(cfg, T, H, prompt_layout)
  video_ids, mos, labels = [], [], []

  def frames():
    for i in range(n):
      record = first if i == 0 else source[i]
      video_ids.append(_text(record["video_id"]))
      mos.append(_f32(record["mos"]))
      labels.append(_f32(record["label"]))
      frames_TxHxWx3 = np.asarray(record["frames"])
      if thumbnails is not None:  # a few kB: the frames themselves are not kept
        thumbnails[video_ids[-1]] = html_report.frame_strip(frames_TxHxWx3)
      yield frames_TxHxWx3

  t0 = time.perf_counter()
  scored = predict.score_batches(model, tokenizer, frames(), prompt=prompt,
                                 batch_size=batch_size, max_new_tokens=max_new_tokens,
                                 train_selection=train_selection, parse=parse)
  seconds = time.perf_counter() - t0
  pred = [s.score for s in scored]
  ok = [s.parsed for s in scored]
  texts = [s.text for s in scored]
  out = epath.Path(out_dir)
  stem = report._safe_name(name)  # pylint: disable=protected-access  # same file names
  paths = dict(json_path=str(out / f"{stem}.json"), png_path=str(out / f"{stem}.png"),
               reasoning_path=str(out / f"{stem}_reasoning.jsonl"))
  if jax.process_index() == 0:
    m = report.write_report(out, name, video_ids, pred, mos, texts, ok)["metrics"]
    lines = [json.dumps(dict(video_id=v, mos=s, label=lb, prediction=p, parse_ok=o, text=t),
                        ensure_ascii=False)
             for v, s, lb, p, o, t in zip(video_ids, mos, labels, pred, ok, texts)]
    report.write_atomic(paths["reasoning_path"], "\n".join(lines) + "\n")
  else:  # the same numbers, without the files
    m = correlation.evaluate(pred, mos)
    m["n_parse_fail"] = n - int(sum(ok))
    m["parse_failure_rate"] = m["n_parse_fail"] / n
    m.update(report.parse_failure_rates(texts))
    m = report._jsonable(m)  # pylint: disable=protected-access
  m["rmse_label"] = correlation.rmse(pred, labels)
  return dict(dataset=name, metrics=m, n=n, frames=int(T), size=int(H),
              seconds=round(seconds, 3), videos_per_s=round(n / seconds, 3), **paths)


def run(config, workdir, *, model=None, tokenizer=None, mesh=None, tag: str = "eval") -> dict:
  """`mode='eval'`: every set of `config.eval.sets` at `eval.frames` x `eval.size`.

  ``model``/``tokenizer``/``mesh``: a trainer passes its own (the model restored from its
  checkpoint); by default they come from the config. Writes `workdir/eval/<tag>/` (the
  per-set files and `summary.json`), prints the summary table and returns the summary:
  {tag, split, frames, size, sets: {name: evaluate_source's dict}, out_dir, summary_path},
  plus `qa` ({name: understanding.evaluate_qa_source's dict}, config.eval.qa_sets) and
  `attribution` ({name: metrics}, config.eval.attribution) when there are any.
  """
  workdir = epath.Path(workdir)
  e = config.eval
  names = [s.strip() for s in e.sets.split(",") if s.strip()]
  if not names:
    raise ValueError("config.eval.sets is empty: name the data sets to evaluate, comma-separated")
  data_dir = factory.data_dir(config, workdir)
  if config.data.synthetic.enabled and factory.SYNTHETIC in names:
    factory.ensure_synthetic(config, workdir, e.frames, e.size)
  # Every set is opened before anything is generated: a typo fails in seconds, not hours.
  sources = {n: open_set(data_dir, n, e.split, e.frames, e.size, config.data.honour_rotation)
             for n in names}
  qa_sources = understanding.open_qa_sets(config, workdir, data_dir)  # config.eval.qa_sets
  mesh = mesh if mesh is not None else factory.make_mesh(config)
  if model is None:
    model, _ = factory.build_model(config, mesh)  # outside the mesh context: logical names there
  if tokenizer is None:
    tokenizer = factory.tokenizer(config, workdir)
  out_dir = workdir / "eval" / tag
  reports, thumbnails = {}, {}
  with jax.set_mesh(mesh):
    for n, source in sources.items():
      reports[n] = evaluate_source(
          model, tokenizer, source, n, out_dir=out_dir, batch_size=e.batch_size,
          max_new_tokens=e.max_new_tokens, prompt_layout=e.prompt_layout,
          train_selection=e.train_selection, max_videos=e.max_videos, parse=e.parse,
          thumbnails=thumbnails.setdefault(n, {}))
    qa = understanding.run_qa(model, tokenizer, qa_sources, config, out_dir)
  attribution = (understanding.attribution_reports(config, workdir, reports, out_dir)
                 if e.attribution else {})
  summary = dict(tag=tag, split=e.split, frames=e.frames, size=e.size, sets=reports,
                 out_dir=str(out_dir), summary_path=str(out_dir / "summary.json"))
  summary.update({k: v for k, v in (("qa", qa), ("attribution", attribution)) if v})
  summary = report._jsonable(summary)  # pylint: disable=protected-access  # NaN -> null
  if jax.process_index() == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1, allow_nan=False))
    print(report.summary_table(reports.values()))
    if qa or attribution:
      print(understanding.summary_table(qa, attribution))
    html_report.write_eval_report(config, workdir, out_dir, reports, thumbnails, tag=tag)
  return summary
