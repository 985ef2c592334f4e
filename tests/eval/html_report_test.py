"""report.html, the results browser: rendered from fake per-set reports and random frame
strips, then loaded in a real headless Chromium (no console message, one row per video,
sorting and filtering from the URL fragment and from header clicks, a screenshot); and
`evaluate.run` writes it.

The browser: $VQA_CHROME, else the first of chromium / chromium-browser / google-chrome on
PATH, else Playwright's download; without one the browser tests skip, naming the install
(`apt-get install -y --no-install-recommends chromium` on Debian/Ubuntu).
"""

import glob
import html.parser
import io
import json
import os
import pathlib
import runpy
import shutil
import subprocess
import types

import numpy as np
import pytest
from PIL import Image

from vqathinker_jax.eval import correlation, evaluate, html_report, predict, report
from vqathinker_jax.model import sharding
from vqathinker_jax.model.config import ModelConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = '<script>console.error("injected")</script></td></tr><tr><td>& "quoted"'


def _find_browser():
  if os.environ.get("VQA_CHROME"):
    return os.environ["VQA_CHROME"]
  for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
    if shutil.which(name):
      return shutil.which(name)
  found = sorted(glob.glob(os.path.expanduser(
      "~/.cache/ms-playwright/chromium-*/chrome-linux*/chrome")))
  return found[-1] if found else None


CHROME = _find_browser()
needs_browser = pytest.mark.skipif(
    CHROME is None, reason="no headless Chromium or Chrome found (tried $VQA_CHROME, chromium, "
    "chromium-browser, google-chrome, Playwright's ~/.cache/ms-playwright); install one with "
    "`apt-get install -y --no-install-recommends chromium`")


def _chrome(target, tmp_path, *args):
  """Runs headless Chromium on ``target`` (a file, with an optional #fragment) ->
  (stdout, the page's console messages). Every console message, error or not, fails."""
  path, _, fragment = str(target).partition("#")
  url = pathlib.Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")
  cmd = [CHROME, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", *args, url]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
  assert r.returncode == 0, r.stderr[-3000:]
  console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
  return r.stdout, console


class _Rows(html.parser.HTMLParser):
  """The rows of each `table.videos` (their data-* attributes and `hidden`), the sections'
  header sort state and the body's data-ready, from a dumped DOM."""

  def __init__(self):
    super().__init__()
    self.sets, self.headers, self.counts, self.ready = {}, {}, {}, None
    self._set = self._count = None

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag == "body":
      self.ready = a.get("data-ready")
    elif tag == "section" and "set" in (a.get("class") or "").split():
      self._set = a["data-name"]
      self.sets[self._set], self.headers[self._set] = [], {}
    elif tag == "tr" and self._set is not None and "data-i" in a:
      self.sets[self._set].append(a)
    elif tag == "th" and self._set is not None and a.get("aria-sort"):
      self.headers[self._set][a["data-key"]] = a["aria-sort"]
    elif tag == "span" and a.get("class") == "count":
      self._count = self._set

  def handle_data(self, data):
    if self._count is not None:
      self.counts[self._count] = data
      self._count = None


def _parse(dom):
  p = _Rows()
  p.feed(dom)
  return p


def _visible(rows):
  return [r for r in rows if "hidden" not in r]


def _fake_reports(rng, sizes=(("alpha", 9), ("beta", 5))):
  """Per-set report dicts as the reasoning lines hold them, strips and distortions (alpha)."""
  reports, thumbs, dist = [], {}, {}
  kinds = ("blur", "noise", "stutter")
  for name, n in sizes:
    videos = []
    for i in range(n):
      ok = i % 4 != 1
      videos.append(dict(video_id=f"{name}_{i:02d}.mp4", mos=float(rng.uniform(0, 100)),
                         label=float(rng.uniform(1, 5)),
                         prediction=float(np.round(rng.uniform(1, 5), 2)) if ok else 3.0,
                         parse_ok=ok, text=f"<think>clip {i}</think>{EVIL}"))
    pred = [v["prediction"] for v in videos]
    mos = [v["mos"] for v in videos]
    m = correlation.evaluate(pred, mos)
    m.update(n_parse_fail=sum(not v["parse_ok"] for v in videos),
             parse_failure_rate=sum(not v["parse_ok"] for v in videos) / n,
             **report.parse_failure_rates([v["text"] for v in videos]))
    reports.append(dict(dataset=name, metrics=report._jsonable(m), videos=videos))
    thumbs[name] = {v["video_id"]: html_report.frame_strip(
        rng.integers(0, 255, (6, 40, 40, 3), np.uint8)) for v in videos}
  dist["alpha"] = {v["video_id"]: {k: int(rng.integers(0, 2)) * int(rng.integers(1, 4))
                                   for k in kinds} for v in reports[0]["videos"]}
  return reports, thumbs, dist


@pytest.fixture(scope="module")
def page(tmp_path_factory):
  """(path of a written report.html, reports, distortions)."""
  reports, thumbs, dist = _fake_reports(np.random.default_rng(0))
  path = tmp_path_factory.mktemp("page") / "report.html"
  html_report.write(path, reports, thumbnails=thumbs, distortions=dist, subtitle="fake")
  return path, reports, dist


# ----------------------------------------------------------------------------- no browser

def test_frame_strip_is_a_small_jpeg_of_evenly_spaced_frames():
  frames = np.zeros((12, 560, 560, 3), np.uint8)
  frames[[0, 4, 7, 11]] = 255  # the frames a 4-strip of 12 shows
  img = Image.open(io.BytesIO(html_report.frame_strip(frames)))
  assert img.format == "JPEG" and img.size == (4 * 64, 64)
  assert np.asarray(img).min() > 200
  wide = Image.open(io.BytesIO(html_report.frame_strip(np.zeros((2, 30, 60, 3), np.uint8))))
  assert wide.size == (2 * 64, 32)  # aspect kept; fewer frames than asked: all of them


def test_page_is_self_contained_escaped_and_has_every_row(page):
  path, reports, _ = page
  text = path.read_text()
  n = sum(len(r["videos"]) for r in reports)
  assert text.count("<tr data-i=") == n
  assert text.count('src="data:image/jpeg;base64,') == n
  assert "<script>console" not in text and "&lt;script&gt;console.error(" in text
  assert "&amp; &quot;quoted&quot;" in text
  for bad in ("http://", "https://", "<link", "@import", "src=\"/", "src=\"file"):
    assert bad not in text, bad
  assert text.count('class="f-dist"') == 1  # alpha only: beta has no distortion labels
  assert text.count("<svg") == 2 and text.count('class="fail"') == 3  # alpha's 1, 5; beta's 1


def test_thumbnails_are_capped_but_every_row_stays(tmp_path):
  reports, thumbs, _ = _fake_reports(np.random.default_rng(1), (("big", 20),))
  text = html_report.render(reports, thumbnails=thumbs, max_thumb_rows=6)
  assert text.count("<tr data-i=") == 20 and text.count("<img ") == 6
  worst = max(reports[0]["videos"], key=lambda v: abs(v["prediction"] - v["label"]))
  row = text.split(f'data-video="{worst["video_id"]}"')[1].split("</tr>")[0]
  assert "<img " in row  # the largest error has its strip


# ----------------------------------------------------------------------------- browser

@needs_browser
def test_the_harness_sees_console_messages_and_exceptions(tmp_path):
  bad = tmp_path / "bad.html"
  bad.write_text('<body><script>console.warn("w"); no_such_function();</script></body>')
  _, console = _chrome(bad, tmp_path, "--dump-dom")
  assert len(console) == 2 and "Uncaught ReferenceError" in console[1]


@needs_browser
def test_loads_without_console_messages_and_shows_every_row(page, tmp_path):
  path, reports, _ = page
  dom, console = _chrome(path, tmp_path, "--dump-dom")
  assert console == []
  p = _parse(dom)
  assert p.ready == "1"  # the page's script ran to its end
  for r in reports:
    n = len(r["videos"])
    assert len(p.sets[r["dataset"]]) == n == len(_visible(p.sets[r["dataset"]]))
    assert p.counts[r["dataset"]] == f"showing {n} of {n}"


@needs_browser
@pytest.mark.parametrize("spec,key", [("-error", "error"), ("mos", "mos"), ("pred", "pred"),
                                      ("-label", "label")])
def test_fragment_sorts_every_table(page, tmp_path, spec, key):
  path, reports, _ = page
  dom, console = _chrome(f"{path}#sort={spec}", tmp_path, "--dump-dom")
  assert console == []
  p = _parse(dom)
  for r in reports:
    rows = p.sets[r["dataset"]]
    vals = [float(x[f"data-{key}"]) for x in rows]
    assert vals == sorted(vals, reverse=spec.startswith("-")) and len(rows) == len(r["videos"])
    assert p.headers[r["dataset"]] == {key: "descending" if spec[0] == "-" else "ascending"}


@needs_browser
def test_fragment_filters_by_parse_failure_and_distortion(page, tmp_path):
  path, reports, dist = page
  dom, console = _chrome(f"{path}#parse=failed&dist=blur", tmp_path, "--dump-dom")
  assert console == []
  p = _parse(dom)
  want = {v["video_id"] for v in reports[0]["videos"]
          if not v["parse_ok"] and dist["alpha"][v["video_id"]]["blur"]}
  assert {r["data-video"] for r in _visible(p.sets["alpha"])} == want
  # beta has no distortion filter: only the parse filter applies.
  assert {r["data-video"] for r in _visible(p.sets["beta"])} == {
      v["video_id"] for v in reports[1]["videos"] if not v["parse_ok"]}
  assert len(p.sets["beta"]) == len(reports[1]["videos"])  # hidden, not removed
  dom, _ = _chrome(f"{path}#dist=none", tmp_path, "--dump-dom")
  clean = {v for v, lv in dist["alpha"].items() if not any(lv.values())}
  assert {r["data-video"] for r in _visible(_parse(dom).sets["alpha"])} == clean


@needs_browser
def test_header_clicks_and_select_changes(page, tmp_path):
  """Real click and change events, from a script appended to a copy of the page."""
  path, reports, _ = page
  clicks = """<script>
  function q(s) { return document.querySelector(s); }
  q('#set-0 th[data-key="mos"]').click();
  q('#set-1 th[data-key="error"]').click(); q('#set-1 th[data-key="error"]').click();
  var sel = q('#set-1 .f-parse'); sel.value = 'ok'; sel.dispatchEvent(new Event('change'));
  document.body.setAttribute('data-hash', location.hash);
  </script></body>"""
  copy = tmp_path / "clicked.html"
  copy.write_text(path.read_text().replace("</body>", clicks))
  dom, console = _chrome(copy, tmp_path, "--dump-dom")
  assert console == []
  p = _parse(dom)
  mos = [float(r["data-mos"]) for r in p.sets["alpha"]]
  err = [float(r["data-error"]) for r in p.sets["beta"]]
  assert mos == sorted(mos) and err == sorted(err, reverse=True)
  assert p.headers == {"alpha": {"mos": "ascending"}, "beta": {"error": "descending"}}
  assert all(r["data-parse"] == "1" for r in _visible(p.sets["beta"]))
  assert len(_visible(p.sets["beta"])) == sum(v["parse_ok"] for v in reports[1]["videos"])
  assert 'data-hash="#sort=-error&amp;parse=ok"' in dom  # the view, kept in the address


@needs_browser
def test_screenshot_is_a_png(page, tmp_path):
  shot = tmp_path / "shot.png"
  _, console = _chrome(page[0], tmp_path, f"--screenshot={shot}", "--window-size=1280,900")
  assert console == []
  data = shot.read_bytes()
  assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
  img = Image.open(shot)
  img.verify()
  assert img.size == (1280, 900)


# ----------------------------------------------------------------------------- evaluate.run

def test_evaluate_run_writes_report_html(tmp_path, monkeypatch):
  """A fake model (the prompt needs only its config) and a fake generator whose answers
  track the frames; the stored-orientation switch reads the `_norot` build."""
  def fake(model, tokenizer, frames, **kw):
    out = []
    for i, f in enumerate(frames):
      s = round(1 + 4 * float(f.mean()) / 255, 2)
      text = f"<think>{EVIL}</think><answer>{s}</answer>" if i % 3 else "no answer"
      out.append(predict.Scored(text, *report.parse_eval_answer(text)))
    return out
  monkeypatch.setattr(predict, "score_batches", fake)
  config = runpy.run_path(str(ROOT / "configs/demo.py"))["get_config"]()
  config.data.synthetic.update(num_videos=12, num_frames=8, test_fraction=0.5)
  config.data.honour_rotation = False
  cfg = ModelConfig()  # an architecture only: nothing is built
  out = evaluate.run(config, tmp_path / "wd", model=types.SimpleNamespace(cfg=cfg),
                     tokenizer=object(), mesh=sharding.single_device_mesh())
  assert (tmp_path / "wd/data/tfds/video_quality/synthetic_6x56_norot").is_dir()
  assert not (tmp_path / "wd/data/tfds/video_quality/synthetic_6x56").exists()
  page_path = tmp_path / "wd/eval/eval/report.html"
  text = page_path.read_text()
  n = out["sets"]["synthetic"]["n"]
  ids = [json.loads(x)["video_id"] for x in
         open(out["sets"]["synthetic"]["reasoning_path"]).read().splitlines()]
  assert text.count("<tr data-i=") == n == len(ids) and text.count("<img ") == n
  assert 'class="f-dist"' in text  # the synthetic set's distortions.json was found
  assert "&lt;script&gt;" in text and "<script>console" not in text
  if CHROME is not None:
    dom, console = _chrome(f"{page_path}#sort=-error", tmp_path, "--dump-dom")
    assert console == []
    rows = _parse(dom).sets["synthetic"]
    assert sorted(r["data-video"] for r in rows) == sorted(ids)
    err = [float(r["data-error"]) for r in rows]
    assert err == sorted(err, reverse=True)
