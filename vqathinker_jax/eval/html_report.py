"""A self-contained results browser: `workdir/eval/<tag>/report.html` (docs/method.md §5).

One file, opened straight from disk: no server, no network, inline CSS and JS, scatter plots
as inline SVG and frame strips as JPEG data URIs. Per data set: the plot and the metrics,
then one row per scored video (frames seen, MOS, label, prediction, error, parse status,
distortions when the set has them, the reasoning text), sortable by clicking a column header
and filterable by parse status and distortion. The view lives in the URL fragment, e.g.
`report.html#sort=-error&parse=failed&dist=blur` (a leading `-` sorts descending), which the
page applies on load and rewrites on every click, so a view can be bookmarked or shared.

Legend: T frames, H/W pixels, 3 RGB channels.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any, Mapping, Sequence

from etils import epath
import numpy as np

from vqathinker_jax.eval import correlation, report

THUMB_FRAMES = 4  # frames per strip: a glance at the clip, not the clip
THUMB_PX = 64  # longest side of each strip frame
MAX_THUMB_ROWS = 300  # rows per set with a strip (~4 kB each); the others keep their row
NAME = "report.html"


# ----------------------------------------------------------------------------- inputs

def frame_strip(frames_TxHxWx3, num_frames: int = THUMB_FRAMES, px: int = THUMB_PX,
                quality: int = 75) -> bytes:
  """JPEG of ``num_frames`` evenly spaced frames side by side, each at most ``px`` a side
  (aspect kept): what a report row shows of the frames the model saw."""
  from PIL import Image

  frames = np.asarray(frames_TxHxWx3)
  T, H, W = frames.shape[:3]
  k = min(num_frames, T)
  scale = px / max(H, W)
  h, w = max(1, round(H * scale)), max(1, round(W * scale))
  tiles = []
  for t in np.round(np.linspace(0, T - 1, k)).astype(int):
    img = Image.fromarray(np.ascontiguousarray(frames[t, ..., :3]).astype(np.uint8))
    tiles.append(np.asarray(img.resize((w, h), Image.BILINEAR, reducing_gap=2.0)))
  buf = io.BytesIO()
  Image.fromarray(np.concatenate(tiles, axis=1)).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def load_distortions(path) -> dict[str, dict[str, int]] | None:
  """`{video_id: {kind: level}}` from a synthetic set's `distortions.json`; None if absent."""
  path = epath.Path(path)
  if not path.exists():
    return None
  return json.loads(path.read_text())


def _data_uri(img: bytes | str) -> str:
  if isinstance(img, str):  # already a data URI
    return img
  mime = "image/png" if img[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
  return f"data:{mime};base64,{base64.b64encode(img).decode('ascii')}"


# ----------------------------------------------------------------------------- pieces

def _num(v, fmt: str = ".4f") -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "nan"
  return format(v, fmt)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  raw = (hi - lo) / max(n, 1)
  mag = 10.0 ** math.floor(math.log10(raw))
  step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
  first = math.ceil(lo / step) * step
  return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _range(v: np.ndarray) -> tuple[float, float]:
  v = v[np.isfinite(v)]
  lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
  pad = 0.05 * (hi - lo) if hi > lo else 0.5
  return lo - pad, hi + pad


def scatter_svg(videos: Sequence[Mapping], metrics: Mapping, width: int = 440,
                height: int = 330) -> str:
  """Inline SVG: prediction (x) against MOS (y), parse failures as red crosses, and the
  4-parameter logistic fit when there is one (as report.py's PNG)."""
  pred = np.array([v["prediction"] for v in videos], np.float64)
  mos = np.array([v["mos"] for v in videos], np.float64)
  ok = np.array([bool(v["parse_ok"]) for v in videos])
  left, right, top, bottom = 48, 12, 10, 38
  (x0, x1), (y0, y1) = _range(pred), _range(mos)

  def sx(x):
    return left + (x - x0) / (x1 - x0) * (width - left - right)

  def sy(y):
    return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

  out = [f'<svg class="scatter" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
         'role="img" aria-label="predicted score against MOS">',
         f'<rect x="{left}" y="{top}" width="{width - left - right}" '
         f'height="{height - top - bottom}" class="frame"/>']
  for t in _nice_ticks(x0, x1):
    out.append(f'<line class="grid" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" '
               f'y2="{height - bottom}"/><text class="tick" x="{sx(t):.1f}" '
               f'y="{height - bottom + 14}" text-anchor="middle">{t:g}</text>')
  for t in _nice_ticks(y0, y1):
    out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" '
               f'y2="{sy(t):.1f}"/><text class="tick" x="{left - 4}" y="{sy(t) + 4:.1f}" '
               f'text-anchor="end">{t:g}</text>')
  out.append(f'<text class="axis" x="{(left + width - right) / 2}" y="{height - 6}" '
             'text-anchor="middle">predicted score</text>')
  out.append(f'<text class="axis" transform="rotate(-90)" x="{-(top + height - bottom) / 2}" '
             'y="12" text-anchor="middle">MOS</text>')
  for v, p, s, o in zip(videos, pred, mos, ok):
    if not (math.isfinite(p) and math.isfinite(s)):
      continue
    tip = f"<title>{html.escape(str(v['video_id']))}: pred {p:g}, MOS {s:g}</title>"
    x, y = sx(p), sy(s)
    if o:
      out.append(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="2.6">{tip}</circle>')
    else:
      out.append(f'<path class="fail" d="M{x - 3:.1f} {y - 3:.1f}l6 6m0 -6l-6 6">{tip}</path>')
  params = metrics.get("logistic_params")
  if params:
    xs = np.linspace(*_range(pred[np.isfinite(pred)]), 96)
    ys = correlation.logistic4(xs, *params)
    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if y0 <= y <= y1)
    out.append(f'<polyline class="fit" points="{pts}"/>')
  out.append("</svg>")
  return "".join(out)


def _metrics_table(m: Mapping) -> str:
  rows = [("n", _num(m.get("n"), "d") if m.get("n") is not None else "nan"),
          ("SRCC", _num(m.get("srcc"))), ("KRCC", _num(m.get("krcc"))),
          ("PLCC", _num(m.get("plcc"))), ("PLCC fitted", _num(m.get("plcc_fitted"))),
          ("RMSE", _num(m.get("rmse"))), ("RMSE fitted", _num(m.get("rmse_fitted")))]
  if "rmse_label" in m:
    rows.append(("RMSE vs label [1, 5]", _num(m.get("rmse_label"))))
  if "parse_failure_rate" in m:
    rows.append(("parse failures", f"{m.get('n_parse_fail', '?')} "
                 f"({_num(100 * m['parse_failure_rate'], '.1f')} %)"))
  for p in report.PARSERS:
    rate = m.get(f"parse_failure_rate_{p}")
    if rate is not None:
      rows.append((f"failure rate, {p} parser", f"{_num(100 * rate, '.1f')} %"))
  body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
  return f'<table class="metrics">{body}</table>'


def _thumb_rows(err: np.ndarray, cap: int) -> set[int]:
  """Rows that get a strip when there are more than ``cap``: the largest errors (what one
  looks at first) and an even spread of the rest."""
  n = len(err)
  if n <= cap:
    return set(range(n))
  worst = np.argsort(-np.nan_to_num(err, nan=-1.0), kind="stable")[:cap // 2]
  rest = np.setdiff1d(np.arange(n), worst)
  spread = rest[np.round(np.linspace(0, len(rest) - 1, cap - len(worst))).astype(int)]
  return set(worst.tolist()) | set(spread.tolist())


def _dist_kinds(levels: Mapping | None) -> list[tuple[str, int]]:
  return sorted((str(k), int(v)) for k, v in (levels or {}).items() if v)


def _set_section(idx: int, rep: Mapping, thumbs: Mapping | None, dist: Mapping | None,
                 max_thumb_rows: int) -> str:
  name = str(rep["dataset"])
  videos = rep["videos"]
  has_label = bool(videos) and all(v.get("label") is not None for v in videos)
  ref = "label" if has_label else "mos"
  err = np.array([abs(float(v["prediction"]) - float(v[ref])) for v in videos], np.float64)
  with_thumb = _thumb_rows(err, max_thumb_rows) if thumbs else set()
  kinds = sorted({k for v in videos for k, _ in _dist_kinds((dist or {}).get(v["video_id"]))})
  cols = [("idx", "#"), ("video", "video"), (None, f"frames ({THUMB_FRAMES})"),
          ("mos", "MOS")]
  if has_label:
    cols.append(("label", "label [1, 5]"))
  cols += [("pred", "prediction"), ("error", f"|pred − {ref}|"), ("parse", "parse")]
  if dist is not None:
    cols.append((None, "distortions"))
  cols.append((None, "reasoning"))
  head = "".join(f'<th data-key="{k}" title="click to sort">{html.escape(t)}</th>' if k else
                 f"<th>{html.escape(t)}</th>" for k, t in cols)
  body = []
  for i, v in enumerate(videos):
    vid = str(v["video_id"])
    levels = _dist_kinds((dist or {}).get(vid))
    img = thumbs.get(vid) if thumbs and i in with_thumb else None
    strip = (f'<img src="{_data_uri(img)}" alt="frames of {html.escape(vid)}">' if img
             else '<span class="none">—</span>')
    ok = bool(v["parse_ok"])
    cells = [f'<td class="num">{i + 1}</td>', f'<td class="vid">{html.escape(vid)}</td>',
             f'<td class="strip">{strip}</td>', f'<td class="num">{float(v["mos"]):.3f}</td>']
    if has_label:
      cells.append(f'<td class="num">{float(v["label"]):.3f}</td>')
    cells += [f'<td class="num">{float(v["prediction"]):.2f}</td>',
              f'<td class="num">{err[i]:.3f}</td>',
              '<td class="ok">ok</td>' if ok else '<td class="bad">failed</td>']
    if dist is not None:
      text = ", ".join(f"{k} {lv}" for k, lv in levels) or "none"
      cells.append(f'<td class="dist">{html.escape(text)}</td>')
    cells.append(f'<td class="txt"><div>{html.escape(str(v.get("text") or ""))}</div></td>')
    attrs = (f'data-i="{i}" data-video="{html.escape(vid)}" data-mos="{float(v["mos"])!r}" '
             f'data-pred="{float(v["prediction"])!r}" data-error="{float(err[i])!r}" '
             f'data-parse="{int(ok)}" data-dist="{html.escape(" ".join(k for k, _ in levels))}"')
    if has_label:
      attrs += f' data-label="{float(v["label"])!r}"'
    body.append(f"<tr {attrs}>{''.join(cells)}</tr>")
  dist_filter = ""
  if dist is not None:
    options = "".join(f'<option value="{html.escape(k)}">{html.escape(k)}</option>'
                      for k in kinds)
    dist_filter = ('<label>distortion <select class="f-dist"><option value="">all</option>'
                   f'<option value="none">none (clean)</option>{options}</select></label>')
  n_fail = sum(not v["parse_ok"] for v in videos)
  thumb_note = (f" Frame strips for {len(with_thumb)} of {len(videos)} rows (the largest "
                "errors and an even spread)." if thumbs and len(with_thumb) < len(videos) else "")
  return f"""
<section class="set" id="set-{idx}" data-name="{html.escape(name)}">
<h2>{html.escape(name)}</h2>
<div class="top">{scatter_svg(videos, rep["metrics"])}{_metrics_table(rep["metrics"])}</div>
<div class="controls">
<label>parse <select class="f-parse"><option value="">all</option><option value="ok">ok</option>
<option value="failed">failed ({n_fail})</option></select></label>
{dist_filter}<span class="count"></span><span class="note">{html.escape(thumb_note)}</span>
</div>
<table class="videos"><thead><tr>{head}</tr></thead>
<tbody>{"".join(body)}</tbody></table>
</section>"""


_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccc}
.sub{color:#666;margin-bottom:12px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
.summary th,.videos th{background:#f3f3f3;text-align:left}
.videos th[data-key]{cursor:pointer;user-select:none}
.videos th[aria-sort=ascending]::after{content:" ▲"}
.videos th[aria-sort=descending]::after{content:" ▼"}
.num{text-align:right;font-variant-numeric:tabular-nums}
.metrics th{font-weight:normal;color:#555;text-align:left}.metrics td{text-align:right}
.top{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.scatter .frame{fill:none;stroke:#999}.scatter .grid{stroke:#eee}
.scatter .tick{font-size:10px;fill:#555}.scatter .axis{font-size:11px;fill:#333}
.scatter .pt{fill:#1f77b4;fill-opacity:.6}.scatter .fail{stroke:#d62728;stroke-width:1.5}
.scatter .fit{fill:none;stroke:#000;stroke-width:1.5}
.controls{margin:10px 0 6px;display:flex;gap:16px;align-items:center}
.count{color:#555}.note{color:#888}
.strip img{display:block;height:64px;image-rendering:auto}
.ok{color:#2a7d2a}.bad{color:#d62728;font-weight:bold}.none{color:#aaa}
.vid{font-family:monospace;white-space:nowrap}.dist{white-space:nowrap}
.txt div{white-space:pre-wrap;max-height:7.5em;overflow:auto;min-width:320px;max-width:640px}
"""

# Sorting and filtering. No console output and no network: the tests load the page in a
# headless browser and fail on any console message.
_JS = """
(function () {
  "use strict";
  var TEXT = {video: true};
  function state() {
    var s = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) s[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1));
    });
    return s;
  }
  function save(s) {
    var parts = [];
    Object.keys(s).forEach(function (k) {
      if (s[k]) parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(s[k]));
    });
    try { history.replaceState(null, "", "#" + parts.join("&")); } catch (e) { /* file:// */ }
  }
  function value(row, key) {
    var v = row.getAttribute("data-" + key) || "";
    if (TEXT[key]) return v;
    v = parseFloat(v);
    return isNaN(v) ? Infinity : v;
  }
  function sortTable(table, spec) {
    var desc = spec.charAt(0) === "-", key = desc ? spec.slice(1) : spec;
    var th = table.querySelector('th[data-key="' + key + '"]');
    if (!th) return false;
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, key), y = value(b, key);
      var c = TEXT[key] ? x.localeCompare(y) : (x < y ? -1 : x > y ? 1 : 0);
      if (desc) c = -c;
      return c || value(a, "i") - value(b, "i");
    });
    var frag = document.createDocumentFragment();
    rows.forEach(function (r) { frag.appendChild(r); });
    body.appendChild(frag);
    table.querySelectorAll("th[data-key]").forEach(function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", desc ? "descending" : "ascending");
    table.setAttribute("data-sort", spec);
    return true;
  }
  function filterSet(section) {
    var parse = section.querySelector(".f-parse").value;
    var d = section.querySelector(".f-dist"), dist = d ? d.value : "";
    var rows = section.querySelector("table.videos").tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i], ok = r.getAttribute("data-parse") === "1";
      var kinds = (r.getAttribute("data-dist") || "").split(" ").filter(Boolean);
      var keep = (!parse || (parse === "ok") === ok) &&
          (!dist || (dist === "none" ? kinds.length === 0 : kinds.indexOf(dist) >= 0));
      r.hidden = !keep;
      if (keep) shown++;
    }
    section.querySelector(".count").textContent = "showing " + shown + " of " + rows.length;
  }
  function pick(select, v) {
    select.value = v || "";
    if (select.value !== (v || "")) select.value = "";  // not offered in this set
  }
  function apply() {
    var s = state();
    document.querySelectorAll("section.set").forEach(function (sec) {
      if (s.sort) sortTable(sec.querySelector("table.videos"), s.sort);
      pick(sec.querySelector(".f-parse"), s.parse);
      var d = sec.querySelector(".f-dist");
      if (d) pick(d, s.dist);
      filterSet(sec);
    });
  }
  document.querySelectorAll("section.set").forEach(function (sec) {
    var table = sec.querySelector("table.videos");
    table.querySelectorAll("th[data-key]").forEach(function (th) {
      th.addEventListener("click", function () {
        var key = th.getAttribute("data-key");
        var spec = table.getAttribute("data-sort") === key ? "-" + key : key;
        sortTable(table, spec);
        var s = state(); s.sort = spec; save(s);
      });
    });
    sec.querySelectorAll("select").forEach(function (sel) {
      sel.addEventListener("change", function () {
        filterSet(sec);
        var s = state();
        s[sel.classList.contains("f-parse") ? "parse" : "dist"] = sel.value;
        save(s);
      });
    });
  });
  window.vqaReport = {sort: sortTable, filter: filterSet, apply: apply};
  window.addEventListener("hashchange", apply);
  apply();
  document.body.setAttribute("data-ready", "1");
})();
"""


# ----------------------------------------------------------------------------- page

def render(reports: Sequence[Mapping[str, Any]], *,
           thumbnails: Mapping[str, Mapping[str, bytes | str]] | None = None,
           distortions: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None,
           title: str = "VQAThinker evaluation", subtitle: str = "",
           max_thumb_rows: int = MAX_THUMB_ROWS) -> str:
  """The whole page as one string.

  ``reports``: per data set `{"dataset", "metrics", "videos": [{"video_id", "mos",
  "prediction", "parse_ok", "text", optional "label"}, ...]}` (write_report's JSON, or the
  reasoning lines; with labels the error column is |prediction − label|, else
  |prediction − MOS|). ``thumbnails``: {dataset: {video_id: JPEG/PNG bytes or data URI}}
  (frame_strip's). ``distortions``: {dataset: {video_id: {kind: level}}} for sets that have
  them; those get a distortion column and filter. Every text is HTML-escaped.
  """
  thumbnails, distortions = thumbnails or {}, distortions or {}
  summary = []
  sections = []
  for i, rep in enumerate(reports):
    name = str(rep["dataset"])
    m = rep["metrics"]
    fail = m.get("parse_failure_rate")
    cells = [len(rep["videos"]), _num(m.get("srcc")), _num(m.get("plcc")),
             _num(m.get("plcc_fitted")), _num(m.get("rmse")),
             "nan" if fail is None else _num(100 * fail, ".1f")]
    # Scrolls without touching the fragment, which holds the view (sort and filters).
    link = (f'<a href="#set-{i}" onclick="document.getElementById(\'set-{i}\').scrollIntoView();'
            f'return false">{html.escape(name)}</a>')
    summary.append(f"<tr><td>{link}</td>"
                   + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    sections.append(_set_section(i, rep, thumbnails.get(name), distortions.get(name),
                                 max_thumb_rows))
  head = ("<tr><th>data set</th><th>n</th><th>SRCC</th><th>PLCC</th><th>PLCC fitted</th>"
          "<th>RMSE</th><th>parse fail %</th></tr>")
  return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1><div class="sub">{html.escape(subtitle)}</div>
<table class="summary">{head}{"".join(summary)}</table>
<p class="sub">Click a column header to sort (again: reverse); the view is kept in the
address (e.g. <code>#sort=-error&amp;parse=failed</code>).</p>
{"".join(sections)}
<script>{_JS}</script>
</body></html>
"""


def write(path, reports: Sequence[Mapping[str, Any]], **kwargs) -> str:
  """Writes `render(reports, **kwargs)` to ``path`` (atomically); returns the path."""
  report.write_atomic(path, render(reports, **kwargs))
  return str(path)


def write_eval_report(config, workdir, out_dir, set_reports: Mapping[str, Mapping],
                      thumbnails: Mapping[str, Mapping[str, bytes]], tag: str = "") -> str:
  """`evaluate.run`'s page: `{out_dir}/report.html` from each set's reasoning lines
  (evaluate_source's `reasoning_path`: video, MOS, label, prediction, parse, text) and
  metrics, the strips collected while scoring and, for the synthetic set, its
  `distortions.json`. Returns the path."""
  from vqathinker_jax import factory

  reports, distortions = [], {}
  for name, r in set_reports.items():
    lines = epath.Path(r["reasoning_path"]).read_text().splitlines()
    reports.append(dict(dataset=name, metrics=r["metrics"],
                        videos=[json.loads(x) for x in lines if x.strip()]))
    if name == factory.SYNTHETIC and config.data.synthetic.enabled:
      root = factory.data_dir(config, workdir).parent / "synthetic_videos"
      levels = load_distortions(root / "distortions.json")
      if levels is not None:
        distortions[name] = levels
  first = next(iter(set_reports.values()), {})
  subtitle = (f"tag {tag} · split {config.eval.split} · {first.get('frames')} frames at "
              f"{first.get('size')} px · parse {config.eval.parse} · workdir {workdir}")
  path = write(epath.Path(out_dir) / NAME, reports, thumbnails=thumbnails,
               distortions=distortions, subtitle=subtitle)
  print(f"results browser: {path}")
  return path
