"""Eval answer parsing, the per-data-set JSON + PNG report and the summary table."""

import json

import numpy as np
import pytest

from vqathinker_jax.eval import report as E
from vqathinker_jax.eval import correlation as M

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text, expected", [
    ("<think>blurry</think><answer>3.42</answer>", (3.42, True)),
    ("<think>x</think>\n<answer> score: 4 </answer>", (4.0, True)),
    ("<answer>2.5</answer> then <answer>4.75</answer>", (2.5, True)),   # FIRST answer
    ("<answer>1.2 or 3.4</answer>", (1.2, True)),                       # first number
    ("<answer>-1.50</answer>", (-1.5, True)),                           # as written, no clip
    ("<answer>\n3.\n</answer>", (3.0, True)),                           # '3.' -> 3
    ("<answer>３.５</answer>", (3.5, True)),                             # Unicode digits
    ("<answer>excellent</answer><answer>4.1</answer>", (3.0, False)),   # first has no number
    ("<think>I'd say 4.5</think>", (3.0, False)),                       # no answer tag
    ("4.5", (3.0, False)),
    ("<answer>4.5", (3.0, False)),                                      # unclosed
    ("", (3.0, False)),
    (None, (3.0, False)),
    ("<answer>" + "9" * 400 + "</answer>", (3.0, False)),               # overflows to inf
])
def test_parse_eval_answer(text, expected):
  score, ok = E.parse_eval_answer(text)
  assert (score, ok) == expected
  assert isinstance(score, float)


@pytest.mark.parametrize("text, expected", [
    ("<think>x</think><answer>3.45</answer>", (3.45, True)),
    ("<answer>\n 3.45 \n</answer>", (3.45, True)),                     # float() strips
    ("<answer>Score: 3.45</answer>", (3.0, False)),                     # the release's 3.0
    ("<answer>3.5 or 4</answer>", (3.0, False)),
    ("<answer>2.5</answer><answer>4.75</answer>", (2.5, True)),         # FIRST answer
    ("<answer>1e0</answer>", (1.0, True)),                              # float() syntax
    ("<answer>nan</answer>", (3.0, False)),                             # non-finite: fallback
    ("<think>4.5</think>", (3.0, False)),
])
def test_reference_parse_is_float_of_the_first_answer(text, expected):
  assert E.parse_eval_answer(text, "reference") == expected


def test_reference_parse_restated():
  """Against a plain restatement of the release's evaluation parse on assorted answers."""
  import re

  def release(text):  # -> (score, parsed)
    m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    try:
      return (float(m.group(1)), True) if m else (3.0, False)
    except ValueError:
      return 3.0, False

  contents = ["4", " 2.25", "4.", ".5", "+3", "-0", "3,5", "３.５", "1_0", "5/5", "", "inf"]
  for c in contents:
    text = f"<think>t</think><answer>{c}</answer>"
    want, parsed = release(text)
    if abs(want) == float("inf"):  # ours: non-finite falls back (docs/method.md §5)
      want, parsed = 3.0, False
    assert E.parse_eval_answer(text, "reference") == (want, parsed), c
  rates = E.parse_failure_rates(["<answer>Score: 3</answer>", "<answer>3</answer>", "none"])
  assert rates == {"parse_failure_rate_reference": 2 / 3, "parse_failure_rate_lenient": 1 / 3}
  with pytest.raises(ValueError, match="parse must be one of"):
    E.parse_eval_answer("<answer>3</answer>", "strict")


def _dataset(n, seed):
  rng = np.random.default_rng(seed)
  mos = rng.uniform(1, 5, n)
  texts = [f"<think>video {i}</think><answer>{min(5, max(1, m + rng.normal(0, .5))):.2f}"
           "</answer>" for i, m in enumerate(mos)]
  texts[0] = "<think>rambling without an answer"
  parsed = [E.parse_eval_answer(t) for t in texts]
  return ([f"v{i}.mp4" for i in range(n)], [p for p, _ in parsed], mos.tolist(), texts,
          [ok for _, ok in parsed])


def test_write_report_json_and_png(tmp_path):
  ids, pred, mos, texts, ok = _dataset(40, 0)
  rep = E.write_report(tmp_path / "eval", "KoNViD-1k", ids, pred, mos, texts, ok)

  png = (tmp_path / "eval" / "KoNViD-1k.png").read_bytes()
  assert png.startswith(PNG_MAGIC) and len(png) > 1000
  assert rep["png_path"] == str(tmp_path / "eval" / "KoNViD-1k.png")

  on_disk = json.loads((tmp_path / "eval" / "KoNViD-1k.json").read_text("utf-8"))
  assert rep["json_path"] == str(tmp_path / "eval" / "KoNViD-1k.json")
  assert on_disk == {k: v for k, v in rep.items() if k not in ("json_path", "png_path")}
  assert on_disk["dataset"] == "KoNViD-1k"
  m = on_disk["metrics"]
  ref = M.evaluate(pred, mos)
  for k in ("n", "srcc", "krcc", "plcc", "plcc_fitted", "rmse", "rmse_fitted"):
    assert m[k] == ref[k], k  # the same computation; JSON round-trips float64 exactly
  assert m["n_parse_fail"] == 1 and m["parse_failure_rate"] == 1 / 40
  assert len(m["logistic_params"]) == 4
  rows = on_disk["videos"]
  assert len(rows) == 40
  assert rows[0] == {"video_id": "v0.mp4", "prediction": 3.0, "mos": mos[0],
                     "parse_ok": False, "text": "<think>rambling without an answer"}
  assert rows[5]["text"] == texts[5] and rows[5]["parse_ok"] is True
  assert rows[5]["prediction"] == pred[5]


def test_write_report_constant_predictions_write_strict_json(tmp_path):
  # All parses failed -> every prediction is the fallback: metrics NaN, JSON null.
  n = 5
  rep = E.write_report(tmp_path, "bad/name", [f"v{i}" for i in range(n)], [3.0] * n,
                       [1, 2, 3, 4, 5], ["garbage"] * n, [False] * n)
  text = (tmp_path / "bad_name.json").read_text()
  assert "NaN" not in text
  m = json.loads(text)["metrics"]
  assert m["srcc"] is None and m["plcc_fitted"] is None and m["logistic_params"] is None
  assert m["parse_failure_rate"] == 1.0
  assert (tmp_path / "bad_name.png").read_bytes().startswith(PNG_MAGIC)
  assert rep["metrics"]["srcc"] is None


def test_write_report_validates_lengths(tmp_path):
  with pytest.raises(ValueError, match="3 video_ids"):
    E.write_report(tmp_path, "x", ["a", "b", "c"], [1, 2, 3], [1, 2], ["", "", ""],
                   [True] * 3)


def test_summary_table(tmp_path):
  reports = []
  for i, name in enumerate(("LSVQ-test", "CGVDS")):
    ids, pred, mos, texts, ok = _dataset(30, i)
    reports.append(E.write_report(tmp_path, name, ids, pred, mos, texts, ok))
  reports.append(json.loads((tmp_path / "CGVDS.json").read_text()))   # loaded JSON works too
  table = E.summary_table(reports)
  lines = table.splitlines()
  assert len(lines) == 4
  assert lines[0].split() == ["dataset", "n", "fail%", "SRCC", "KRCC", "PLCC", "PLCCfit",
                              "RMSEfit"]
  cells = lines[1].split()
  assert cells[0] == "LSVQ-test" and cells[1] == "30" and cells[2] == "3.3"
  # Printed with 4 decimals: within half of the last digit.
  assert abs(float(cells[3]) - reports[0]["metrics"]["srcc"]) <= 5e-5
  assert lines[2] == lines[3]
  assert len({len(l) for l in lines}) == 1
  const = E.write_report(tmp_path, "const", ["a", "b", "c"], [3.0] * 3, [1, 2, 3],
                         [""] * 3, [False] * 3)
  assert "nan" in E.summary_table([const]).splitlines()[1]
