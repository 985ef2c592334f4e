"""eval/understanding.py: option parsing, accuracy and attribution against hand counts, the
QA prompt, the shared generation path (prompt padding, score_batches unchanged), a hand-made
public-format question file built and answered end to end by a tiny random model, and
`mode=eval` with the synthetic QA set and attribution."""

import json
import pathlib
import runpy

import jax
import numpy as np
import pytest

from data_pipelines import labels, qa, synthetic
from vqathinker_jax import config_check, factory
from vqathinker_jax.eval import evaluate, predict, report, understanding
from vqathinker_jax.model import sharding
from vqathinker_jax.rl import rollout
from vqathinker_jax.text import demo_tokenizer, tokenizer as tok_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
T, S, NEW = 3, 56, 8
OPTIONS = ["Good", "Acceptable", "Poor"]


def _demo_config():
  return runpy.run_path(str(ROOT / "configs/demo.py"))["get_config"]()


# ----------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, want", [
    ("<think>x</think><answer>B</answer>", 1),
    ("<answer>B.</answer>", 1),
    ("<answer>(B)</answer>", 1),
    ("<answer>B)</answer>", 1),
    ("<answer> b </answer>", 1),
    ("<answer>B. Acceptable</answer>", 1),
    ("<answer>(C) poor.</answer>", 2),
    ("<answer>acceptable</answer>", 1),
    ("<answer>\n  Acceptable.\n</answer>", 1),
    ("<answer>A</answer> then <answer>B</answer>", 0),  # the first answer
    ("<answer>B. Poor</answer>", None),  # a letter with another option's text
    ("<answer>D</answer>", None),  # past the last option
    ("<answer>The answer is B</answer>", None),
    ("<answer>AB</answer>", None),
    ("<answer></answer>", None),
    ("<answer>B", None),  # unclosed
    ("B", None),  # no answer block
    ("", None),
    (None, None),
])
def test_parse_choice(text, want):
  assert understanding.parse_choice(text, OPTIONS) == want


def test_qa_metrics_by_hand():
  m = understanding.qa_metrics(answers=[0, 1, 2, 0, 1], predictions=[0, None, 2, 1, 1],
                               types=["a", "a", "b", "b", "b"], num_options=[2, 2, 3, 4, 4])
  assert (m["n"], m["correct"], m["n_parse_fail"]) == (5, 3, 1)
  assert m["accuracy"] == 3 / 5 and m["parse_failure_rate"] == 1 / 5
  assert m["chance"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 4) / 5)
  assert m["per_type"]["a"] == dict(n=2, correct=1, accuracy=0.5, n_parse_fail=1,
                                    parse_failure_rate=0.5, chance=0.5)
  b = m["per_type"]["b"]
  assert (b["n"], b["correct"], b["accuracy"], b["n_parse_fail"]) == (3, 2, 2 / 3, 0)


# ----------------------------------------------------------------------------- attribution

def test_keywords_name_every_kind_on_whole_words():
  assert set(understanding.KEYWORDS) == set(synthetic.WEIGHTS)
  named = understanding.named_kinds
  assert named("Slightly BLURRY, soft edges") == {"blur"}
  assert named("the image is out of focus") == {"blur"}
  assert named("software and softball") == set()  # whole words only
  assert named("grainy, with block artifacts") == {"noise", "compression"}
  assert named("under-exposed and dark") == {"exposure"}
  assert named("a green colour cast; tinted") == {"colour_cast"}
  assert named("colourful") == set()
  assert named("it freezes, then judders") == {"stutter", "frame_drop", "judder"}
  assert named(None) == set()


def test_attribution_rates_by_hand():
  z = dict.fromkeys(synthetic.WEIGHTS, 0)
  dist = {"v1": dict(z, blur=2), "v2": dict(z, noise=1, compression=3), "v3": dict(z, stutter=2),
          "v4": dict(z, exposure=1), "p1": dict(z), "p2": dict(z)}
  texts = {"v1": "<think>The frames look blurry.</think><answer>2</answer>",
           "v2": "<think>Some grain is visible.</think><answer>3</answer>",
           "v3": "<think>Motion is jerky",  # cut by the token limit: still its think
           "v4": "It is dark. <answer>2</answer>",  # no think block: nothing named
           "p1": "<think>Sharp, clean, well exposed.</think><answer>4.5</answer>",
           "p2": "<think>Excellent quality.</think><answer>4.8</answer>"}
  res = understanding.attribution(texts, dist)
  m = res["metrics"]
  assert (m["n"], m["n_distorted"], m["n_pristine"], m["n_no_think"]) == (6, 4, 2, 1)
  assert (m["attributed"], m["attribution_rate"]) == (3, 3 / 4)  # v1, v2 (noise), v3
  assert (m["attributed_strongest"], m["attribution_rate_strongest"]) == (2, 2 / 4)  # not v2
  assert (m["false_mentions"], m["false_mention_rate"]) == (1, 1 / 2)  # p1: "exposed"
  assert m["per_kind"]["blur"] == dict(n_active=1, named_active=1, rate_active=1.0,
                                       n_inactive=5, named_inactive=0, rate_inactive=0.0)
  assert m["per_kind"]["exposure"]["named_active"] == 0  # v4 had no think
  assert m["per_kind"]["exposure"]["named_inactive"] == 1  # p1
  fd = m["per_kind"]["frame_drop"]
  assert (fd["n_active"], fd["n_inactive"], fd["named_inactive"]) == (0, 6, 1)
  assert np.isnan(fd["rate_active"])
  rows = {r["video_id"]: r for r in res["videos"]}
  assert rows["v2"]["strongest"] == "compression" and rows["v2"]["named"] == ["noise"]
  assert rows["p2"]["false_mention"] is False and rows["v1"]["false_mention"] is None
  with pytest.raises(ValueError, match="no distortion levels"):
    understanding.attribution({"x": ""}, dist)


# ----------------------------------------------------------------------------- prompt

def test_qa_prompt_layout():
  base = tok_lib.PromptConfig(num_frames=2, tokens_per_frame=1, motion=True)
  cfg = tok_lib.qa_prompt(base, " Is it sharp? ", ["Yes", "No"])
  user = tok_lib.user_text(cfg)
  assert user == (
      "Now you will receive a video:\nFrame1:<image>\nFrame2:<image>\nMotion Feature:<image>\n"
      "You are doing the video quality assessment task. Here is the question: Is it sharp?\n"
      "A. Yes\nB. No\nAnswer with the letter of the correct option. First output the thinking "
      "process in <think> </think> tags and then output the letter of the correct option as "
      "the final answer in <answer> </answer> tags.")
  assert (cfg.num_frames, cfg.system_message) == (2, base.system_message)
  with pytest.raises(ValueError, match="2-26 options"):
    tok_lib.qa_prompt(base, "q", ["only"])


# ----------------------------------------------------------------------------- model

@pytest.fixture(scope="module")
def tok():
  return demo_tokenizer.build()


@pytest.fixture(scope="module")
def model():
  return factory.build_model(_demo_config(), sharding.single_device_mesh())[0]


def _base_prompt(model):
  c = model.cfg
  return tok_lib.PromptConfig(
      num_frames=T, motion=c.motion is not None,
      tokens_per_frame=tok_lib.tokens_per_frame(S, c.vision.patch_size, c.downsample_ratio))


def _frames(n, seed=0):
  return list(np.random.default_rng(seed).integers(0, 255, (n, T, S, S, 3), np.uint8))


def test_generate_texts_pads_prompts_without_changing_a_row(model, tok):
  base = _base_prompt(model)
  ids = [tok_lib.prompt_ids(tok, tok_lib.qa_prompt(base, q, o)) for q, o in
         (("Is it sharp?", ["Yes", "No"]),
          ("Which distortion is most visible in this video, if any?", ["a", "bb", "ccc", "d"]))]
  assert len(ids[0]) < len(ids[1])
  frames = _frames(2)
  together = predict.generate_texts(model, tok, zip(frames, ids), prompt_len=len(ids[1]) + 5,
                                    batch_size=2, max_new_tokens=NEW)
  alone = [predict.generate_texts(model, tok, [(f, i)], prompt_len=len(i), batch_size=1,
                                  max_new_tokens=NEW)[0] for f, i in zip(frames, ids)]
  assert together == alone


def test_score_batches_is_the_rollout_it_was(model, tok):
  """The generation loop now shared with the QA path gives score_batches' texts and scores
  as its own loop did: one tiled prompt, no padding, the last batch padded by repetition."""
  prompt = _base_prompt(model)
  frames = _frames(3, seed=1)
  got = predict.score_batches(model, tok, iter(frames), prompt=prompt, batch_size=2,
                              max_new_tokens=NEW)
  ids_BP = np.tile(tok_lib.prompt_ids(tok, prompt), (2, 1))
  want = []
  for chunk in (frames[:2], frames[2:] * 2):
    out = rollout.generate_jit(model, ids_BP, np.ones_like(ids_BP),
                               factory.normalize_frames(np.stack(chunk)), rng=jax.random.key(0),
                               greedy=True, max_new_tokens=NEW, stop_ids=tok.special.stop_ids)
    want += [tok.decode(t[:k]) for t, k in zip(np.asarray(out["tokens_NC"]),
                                                np.asarray(out["lengths_N"]))]
  want = want[:3]
  assert [s.text for s in got] == want
  assert [(s.score, s.parsed) for s in got] == [report.parse_eval_answer(t) for t in want]


HAND_MADE = [
    dict(video="synthetic_00000.mp4", question="How would you rate the sharpness?",
         options=["Good", "Acceptable", "Poor"], answer="Poor", type="sharpness"),
    dict(video="synthetic_00001.mp4", question="Is there visible noise?", options=["Yes", "No"],
         answer="B", type="noise"),
    dict(video="synthetic_00001.mp4", question="Overall quality?",
         options=["excellent", "fair", "bad", "terrible"], answer="(C)", type="overall"),
    dict(video="synthetic_00002.mp4", question="Is the exposure right?",
         options=["Too dark", "Right", "Too bright"], answer="Right", type="exposure"),
    dict(video="missing.mp4", question="q", options=["a", "b"], answer="a"),  # skipped
]


@pytest.fixture(scope="module")
def hand_set(tmp_path_factory):
  """(data_dir, build report): HAND_MADE over 3 tiny synthetic clips at T x S."""
  root = tmp_path_factory.mktemp("hand_qa")
  _, videos = synthetic.generate(str(root / "src"), num_videos=3, seed=0, num_frames=6,
                                 height=32, width=48)
  (root / "q.json").write_text(json.dumps(HAND_MADE))
  rep = qa.build("hand_qa", str(root / "q.json"), videos, str(root / "tfds"), T, S,
                 progress=False)
  return root / "tfds", rep


def test_hand_made_set_end_to_end(model, tok, hand_set, tmp_path):
  data_dir, built = hand_set
  assert (built["ok"], built["skipped_by_kind"]) == (4, {"missing_file": 1})
  source = understanding.open_qa_set(data_dir, "hand_qa", T, S)
  rep = understanding.evaluate_qa_source(model, tok, source, "hand_qa", out_dir=tmp_path,
                                         batch_size=3, max_new_tokens=NEW)
  js = json.loads(pathlib.Path(rep["json_path"]).read_text())
  assert pathlib.Path(rep["json_path"]).name == "hand_qa_qa.json"
  assert rep["n"] == js["metrics"]["n"] == len(js["questions"]) == 4
  assert (rep["frames"], rep["size"]) == (T, S) and rep["seconds"] > 0
  assert [q["answer"] for q in js["questions"]] == ["C", "B", "C", "B"]
  assert [q["answer_text"] for q in js["questions"]] == ["Poor", "No", "bad", "Right"]
  for q, src in zip(js["questions"], HAND_MADE):
    assert set(q) == {"question_id", "video_id", "type", "question", "options", "answer",
                      "answer_text", "prediction", "correct", "text"}
    assert (q["video_id"], q["question"], q["options"]) == (src["video"], src["question"],
                                                           src["options"])
    assert isinstance(q["text"], str)  # every question answered (maybe badly)
    p = understanding.parse_choice(q["text"], q["options"])
    assert q["prediction"] == (None if p is None else "ABCD"[p])
    assert q["correct"] == (q["prediction"] == q["answer"])
  m = js["metrics"]
  assert m["correct"] == sum(q["correct"] for q in js["questions"])
  assert m["accuracy"] == m["correct"] / 4 and rep["metrics"] == m
  assert {t: b["n"] for t, b in m["per_type"].items()} == {
      "exposure": 1, "noise": 1, "overall": 1, "sharpness": 1}
  with pytest.raises(FileNotFoundError, match=r"QA set 'nope' \(config.eval.qa_sets\).*"
                     r"python -m data_pipelines.qa --name nope"):
    understanding.open_qa_set(data_dir, "nope", T, S)


def test_accuracy_through_the_set_by_hand(model, tok, hand_set, tmp_path, monkeypatch):
  """Answers fixed by hand (correct letter, option text, a wrong letter, no answer):
  accuracy 2/4, one failure, per type as counted."""
  answers = ["<think>soft</think><answer>C</answer>", "<answer>no.</answer>",
             "<answer>A</answer>", "I cannot tell"]
  seen = []

  def fake(model, tokenizer, videos, *, prompt_len, **kw):
    for frames, ids in videos:
      assert frames.shape == (T, S, S, 3) and len(ids) <= prompt_len
      seen.append(tok.decode(ids))
    return answers[:len(seen)]

  monkeypatch.setattr(predict, "generate_texts", fake)
  source = understanding.open_qa_set(hand_set[0], "hand_qa", T, S)
  rep = understanding.evaluate_qa_source(model, tok, source, "hand_qa", out_dir=tmp_path,
                                         batch_size=2, max_new_tokens=NEW)
  m = rep["metrics"]
  assert (m["n"], m["correct"], m["accuracy"], m["n_parse_fail"]) == (4, 2, 0.5, 1)
  assert m["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4 + 1 / 3) / 4)
  assert {t: b["correct"] for t, b in m["per_type"].items()} == {
      "exposure": 0, "noise": 1, "overall": 0, "sharpness": 1}
  assert "Is there visible noise?\nA. Yes\nB. No\nAnswer with the letter" in seen[1]


# ----------------------------------------------------------------------------- eval mode

def test_eval_mode_reports_qa_and_attribution_on_the_synthetic_set(model, tok, tmp_path,
                                                                   capsys):
  config = _demo_config()
  config.data.synthetic.update(num_videos=12, num_frames=8, test_fraction=0.5)
  config.eval.update(max_new_tokens=NEW, batch_size=4, qa_sets="synthetic_qa")
  mesh = sharding.single_device_mesh()
  out = evaluate.run(config, tmp_path / "wd", model=model, tokenizer=tok, mesh=mesh)
  eval_dir = tmp_path / "wd/eval/eval"
  summary = json.loads((eval_dir / "summary.json").read_text())
  assert summary == out and list(summary["sets"]) == ["synthetic"]
  n = summary["sets"]["synthetic"]["n"]
  # The questions: one per clip of the test split, answered by its strongest distortion.
  root = tmp_path / "wd/data/synthetic_videos"
  dist = json.loads((root / "distortions.json").read_text())
  bench = labels.benchmark("synthetic", split="hash:0.5")
  test_ids = sorted(v for v in dist if labels.split_of(bench, v) == "test")
  questions = json.loads((root / "synthetic_qa.json").read_text())
  assert [q["video"] for q in questions] == test_ids and len(test_ids) == n
  for q in questions:
    assert q["answer"] == qa.OPTION_TEXT[qa.strongest(dist[q["video"]]) or qa.NONE]
    assert len(q["options"]) == 4 and qa.OPTION_TEXT[qa.NONE] in q["options"]
  qa_rep = summary["qa"]["synthetic_qa"]
  assert qa_rep["n"] == qa_rep["metrics"]["n"] == n
  qa_js = json.loads((eval_dir / "synthetic_qa_qa.json").read_text())
  assert [q["video_id"] for q in qa_js["questions"]] == test_ids
  att = summary["attribution"]["synthetic"]["metrics"]
  assert att["n"] == n and att["n_distorted"] + att["n_pristine"] == n
  att_js = json.loads((eval_dir / "synthetic_attribution.json").read_text())
  reasoning = [json.loads(x) for x in (eval_dir / "synthetic_reasoning.jsonl").read_text()
               .splitlines()]
  assert [r["video_id"] for r in att_js["videos"]] == [r["video_id"] for r in reasoning]
  assert att_js["metrics"] == att
  printed = capsys.readouterr().out
  assert "synthetic_qa" in printed and "attribution" in printed
  # A second evaluation reuses the generated questions and the QA build.
  mtime = (root / "synthetic_qa.json").stat().st_mtime_ns
  config.eval.update(attribution=False)
  again = evaluate.run(config, tmp_path / "wd", model=model, tokenizer=tok, mesh=mesh, tag="t2")
  assert (root / "synthetic_qa.json").stat().st_mtime_ns == mtime
  assert "attribution" not in again and again["qa"]["synthetic_qa"]["metrics"] == \
      qa_rep["metrics"]  # greedy: the same answers
  # Off: the SRCC/PLCC summary alone, as before.
  config.eval.update(qa_sets="")
  plain = evaluate.run(config, tmp_path / "wd", model=model, tokenizer=tok, mesh=mesh, tag="t3")
  assert set(plain) == {"tag", "split", "frames", "size", "sets", "out_dir", "summary_path"}
  assert not list((tmp_path / "wd/eval/t3").glob("*_qa.json"))
  assert not list((tmp_path / "wd/eval/t3").glob("*_attribution.json"))


def _qa_problems(config, tmp_path):
  try:
    config_check.validate(config, num_devices=1, workdir=tmp_path)
  except config_check.ConfigError as e:
    return [p for p in e.problems if "qa_" in p]
  return []


def test_config_check_rules_for_the_qa_fields(tmp_path, hand_set):
  config = _demo_config()
  config.eval.update(qa_sets="synthetic_qa", qa_num_options=4)
  assert _qa_problems(config, tmp_path) == []
  config.eval.update(qa_num_options=1, qa_sets="Bad-Name")
  got = _qa_problems(config, tmp_path)
  assert len(got) == 2
  assert got[0].startswith("config.eval.qa_num_options=1: must be in [2, 9]")
  assert got[1].startswith("config.eval.qa_sets='Bad-Name':")
  # Without the synthetic set, a named QA set must be built under data_dir.
  config = _demo_config()
  config.mode = "eval"
  config.data.synthetic.enabled = False
  config.data.data_dir = str(hand_set[0])
  config.eval.update(frames=T, size=S, qa_sets="hand_qa")
  assert _qa_problems(config, tmp_path) == []
  config.eval.update(qa_sets="hand_qa,synthetic_qa")
  (got,) = _qa_problems(config, tmp_path)
  assert "QA set 'synthetic_qa' at 3x56 is not built" in got
  assert "only with config.data.synthetic.enabled=True" in got
  assert "python -m data_pipelines.qa --name synthetic_qa" in got
