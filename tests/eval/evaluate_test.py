"""`evaluate`: reports, reasoning lines and metrics on a tiny built synthetic set, greedy
determinism, batch-padding and mesh invariance, and `run` end to end on the demo config."""

import json
import pathlib
import runpy

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats

import tolerance
from data_pipelines import builder, synthetic
from vqathinker_jax import factory
from vqathinker_jax.eval import correlation, evaluate, predict, report
from vqathinker_jax.model import sharding
from vqathinker_jax.text import demo_tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
T, S, NEW = 3, 56, 8


def _demo_config():
  return runpy.run_path(str(ROOT / "configs/demo.py"))["get_config"]()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """(data_dir, build report): 12 clips, all in the 'test' split, at T x S."""
  root = tmp_path_factory.mktemp("evaluate")
  labels, videos = synthetic.generate(str(root / "src"), num_videos=12, seed=0, num_frames=8,
                                      height=64, width=96)
  report = builder.build("synthetic", labels, videos, str(root / "tfds"), T, S, split="test",
                         progress=False)
  return root / "tfds", report


@pytest.fixture(scope="module")
def source(data):
  return evaluate.open_set(data[0], "synthetic", "test", T, S)


@pytest.fixture(scope="module")
def tok():
  return demo_tokenizer.build()


def _model(mesh):
  return factory.build_model(_demo_config(), mesh)[0]


@pytest.fixture(scope="module")
def model():
  return _model(sharding.single_device_mesh())


def _eval(model, tok, source, out_dir, batch_size=4, **kw):
  return evaluate.evaluate_source(model, tok, source, "synthetic", out_dir=out_dir,
                                  batch_size=batch_size, max_new_tokens=NEW, **kw)


@pytest.fixture(scope="module")
def base(model, tok, source, tmp_path_factory):
  """One batch-4 evaluation on one device: (returned report, JSON, reasoning lines)."""
  rep = _eval(model, tok, source, tmp_path_factory.mktemp("base"))
  lines = pathlib.Path(rep["reasoning_path"]).read_text().splitlines()
  return rep, json.loads(pathlib.Path(rep["json_path"]).read_text()), [json.loads(x) for x in lines]


def _texts(report_json):
  return [v["text"] for v in report_json["videos"]]


def test_writes_report_plot_and_one_reasoning_line_per_video(base, source):
  rep, js, lines = base
  assert rep["n"] == len(source) == 12 and (rep["frames"], rep["size"]) == (T, S)
  assert pathlib.Path(rep["png_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert rep["seconds"] > 0 and rep["videos_per_s"] > 0
  records = [source[i] for i in range(len(source))]
  ids = [r["video_id"].decode() for r in records]
  assert [v["video_id"] for v in js["videos"]] == ids == [x["video_id"] for x in lines]
  for x, r, v in zip(lines, records, js["videos"]):
    assert set(x) == {"video_id", "mos", "label", "prediction", "parse_ok", "text"}
    # float32 values written in their shortest decimal form: they read back exactly.
    assert np.float32(x["mos"]) == r["mos"] and np.float32(x["label"]) == r["label"]
    assert (x["prediction"], x["parse_ok"]) == report.parse_eval_answer(x["text"])
    assert x["text"] == v["text"] and x["prediction"] == v["prediction"]
  assert js["metrics"]["n"] == 12
  assert js["metrics"]["parse_failure_rate"] == sum(not x["parse_ok"] for x in lines) / 12
  for parser in report.PARSERS:  # each parser's failure rate, beside the one used
    assert js["metrics"][f"parse_failure_rate_{parser}"] == sum(
        not report.parse_eval_answer(x["text"], parser)[1] for x in lines) / 12


def test_greedy_is_deterministic_and_padding_invariant(model, tok, source, base, tmp_path):
  again = _eval(model, tok, source, tmp_path / "again")
  assert _texts(json.loads(pathlib.Path(again["json_path"]).read_text())) == _texts(base[1])
  # 12 = 5 + 5 + 2: the last batch is padded with 3 repeats, which must not leak into rows.
  by5 = _eval(model, tok, source, tmp_path / "by5", batch_size=5)
  assert _texts(json.loads(pathlib.Path(by5["json_path"]).read_text())) == _texts(base[1])


def test_max_videos_caps_and_the_parse_is_chosen(model, tok, source, base, tmp_path):
  rep = _eval(model, tok, source, tmp_path, max_videos=5, parse="reference")
  js = json.loads(pathlib.Path(rep["json_path"]).read_text())
  assert rep["n"] == js["metrics"]["n"] == 5
  assert len(pathlib.Path(rep["reasoning_path"]).read_text().splitlines()) == 5
  assert _texts(js) == _texts(base[1])[:5]
  assert [(v["prediction"], v["parse_ok"]) for v in js["videos"]] == [
      report.parse_eval_answer(v["text"], "reference") for v in js["videos"]]
  with pytest.raises(ValueError, match="at least 3"):
    _eval(model, tok, source, tmp_path, max_videos=2)


def test_metrics_match_a_recomputation_from_the_json(model, tok, source, tmp_path, monkeypatch):
  """A random model almost never answers (all 3.0, correlations NaN), so the generator is
  replaced by one whose answers track the frames' brightness, with two parse failures."""
  def fake(model, tokenizer, frames, **kw):
    out = []
    for i, f in enumerate(frames):
      s = round(1 + 4 * float(f.mean()) / 255, 2)
      text = f"<think>x</think><answer>{s}</answer>" if i % 5 else "no answer"
      out.append(predict.Scored(text, *report.parse_eval_answer(text)))
    return out
  monkeypatch.setattr(predict, "score_batches", fake)
  rep = _eval(model, tok, source, tmp_path)
  js = json.loads(pathlib.Path(rep["json_path"]).read_text())
  pred = np.array([v["prediction"] for v in js["videos"]])
  mos = np.array([v["mos"] for v in js["videos"]])
  label = np.array([x["label"] for x in map(json.loads,
                                            open(rep["reasoning_path"]).read().splitlines())])
  assert len(set(pred)) > 5 and js["metrics"]["n_parse_fail"] == 3  # i = 0, 5, 10
  expected = correlation.evaluate(pred, mos)
  for k in ("srcc", "krcc", "plcc", "plcc_fitted", "rmse", "rmse_fitted"):
    assert js["metrics"][k] == expected[k], k  # the same computation on the same values
    assert rep["metrics"][k] == js["metrics"][k]
  # Against scipy: metrics_test's float64 budget (normalised sums at scale 1).
  for k, ref in (("srcc", stats.spearmanr), ("plcc", stats.pearsonr), ("krcc", stats.kendalltau)):
    tolerance.assert_close(js["metrics"][k], ref(pred, mos)[0], tolerance.CORR_VS_SCIPY, scale=1.0,
                           eps=tolerance.EPS64, name=k)
  tolerance.assert_close(rep["metrics"]["rmse_label"], np.sqrt(np.mean((pred - label) ** 2)),
                         tolerance.CORR_VS_SCIPY, eps=tolerance.EPS64, name="rmse")


def _on_mesh(model, mesh):
  """The same parameters laid out on ``mesh`` by their logical axes (as a build there
  would; a tenth of its time)."""
  graphdef, state = nnx.split(model)
  shardings = sharding.param_shardings(state, mesh)
  state = jax.tree.map(lambda v, s: v.replace(jax.device_put(v.get_value(), s.get_value())),
                       state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def test_sharded_batch_gives_the_same_texts(model, tok, source, base, tmp_path):
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 1}, jax.devices()[:2])
  m = _on_mesh(model, mesh)
  assert len(jax.tree.leaves(nnx.state(m))[0].sharding.device_set) == 2
  with jax.set_mesh(mesh):
    rep = _eval(m, tok, source, tmp_path)
  assert _texts(json.loads(pathlib.Path(rep["json_path"]).read_text())) == _texts(base[1])


def test_missing_set_names_the_config_fields_and_prepare(data, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'nope' \(config.eval.sets\).*config.data."
                     r"data_dir.*python -m data_pipelines.prepare --name nope"):
    evaluate.open_set(data[0], "nope", "test", T, S)
  with pytest.raises(FileNotFoundError, match=r"no split 'val' \(config.eval.split\)"):
    evaluate.open_set(data[0], "synthetic", "val", T, S)
  config = _demo_config()
  config.data.synthetic.enabled = False
  config.data.data_dir = str(data[0])
  config.eval.update(sets="synthetic,nope", frames=T, size=S)
  with pytest.raises(FileNotFoundError, match="'nope'"):  # before any model is built
    evaluate.run(config, tmp_path, model=object(), tokenizer=object())
  config.data.data_dir = ""
  with pytest.raises(ValueError, match="config.data.data_dir is empty"):
    factory.data_dir(config, tmp_path)


def test_run_on_the_demo_config(model, tok, tmp_path, capsys):
  config = _demo_config()
  config.data.synthetic.update(num_videos=12, num_frames=8, test_fraction=0.5)
  config.eval.update(max_new_tokens=NEW, batch_size=4)
  out = evaluate.run(config, tmp_path / "wd", mesh=sharding.single_device_mesh())
  data_dir = factory.data_dir(config, tmp_path / "wd")
  assert data_dir == tmp_path / "wd/data/tfds"
  built = json.loads((data_dir / "video_quality/synthetic_6x56/build_report.json").read_text())
  n = built["splits"]["test"]
  eval_dir = tmp_path / "wd/eval/eval"
  summary = json.loads((eval_dir / "summary.json").read_text())
  assert summary == out and list(summary["sets"]) == ["synthetic"]
  rep = summary["sets"]["synthetic"]
  assert rep["n"] == n >= 3 and (rep["frames"], rep["size"]) == (6, 56)
  for f in ("synthetic.json", "synthetic.png", "synthetic_reasoning.jsonl"):
    assert (eval_dir / f).exists(), f
  assert len((eval_dir / "synthetic_reasoning.jsonl").read_text().splitlines()) == n
  assert "synthetic" in capsys.readouterr().out  # the summary table
  # A second run (the trainer's, tagged) renders and builds nothing again.
  labels = tmp_path / "wd/data/synthetic_videos/labels.json"
  mtime = labels.stat().st_mtime_ns
  again = evaluate.run(config, tmp_path / "wd", model=model, tokenizer=tok,
                       mesh=sharding.single_device_mesh(), tag="step_10")
  assert labels.stat().st_mtime_ns == mtime
  assert json.loads((tmp_path / "wd/eval/step_10/summary.json").read_text())["tag"] == "step_10"
  # Same seed, same tokenizer: the model run builds is the one given.
  assert [json.loads(x)["text"] for x in open(again["sets"]["synthetic"]["reasoning_path"])] == \
      [json.loads(x)["text"] for x in open(rep["reasoning_path"])]
