"""data_pipelines/qa.py: the question file (public format, aliases, the bad-row zoo), the
TFDS build (records in file order, frames as decode gives them, reuse, nothing usable), and
the synthetic 'which distortion' questions (deterministic, strongest kind, shuffled)."""

import json
import logging
import os

import numpy as np
import pytest

from data_pipelines import decode, qa, synthetic

T, S = 3, 28


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  """(root, videos_dir, distortions): 3 tiny synthetic clips."""
  root = tmp_path_factory.mktemp("qa_clips")
  _, videos = synthetic.generate(str(root), num_videos=3, seed=1, num_frames=6, height=32,
                                 width=48)
  return root, videos, json.loads((root / "distortions.json").read_text())


def _write(path, rows):
  path.write_text(json.dumps(rows))
  return str(path)


GOOD = [
    dict(video="synthetic_00000.mp4", question="How is the sharpness?",
         options=["Good", "Acceptable", "Poor"], answer="Poor", type="blur"),
    dict(video="synthetic_00001.mp4", question="Is there noise?", options=["Yes", "No"],
         answer="B", type="noise", id="q-noise"),
    # Q-Bench's own keys, a number as type, the letter in parentheses.
    dict(video_path="synthetic_00001.mp4", question="Overall?", candidates=["high", "low"],
         correct_ans="(A)", type=2),
    dict(video="synthetic_00002.mp4", question="Which?", options=["dark", "bright", "fine"],
         answer="c. fine"),
]


def test_reads_the_public_format_and_its_aliases(tmp_path):
  questions, skipped = qa.read(_write(tmp_path / "q.json", GOOD))
  assert skipped == []
  assert [q.answer for q in questions] == [2, 1, 0, 2]
  assert [q.type for q in questions] == ["blur", "noise", "2", qa.UNTYPED]
  assert [q.qid for q in questions] == ["0", "q-noise", "2", "3"]
  assert questions[2].video == "synthetic_00001.mp4" and questions[2].options == ("high", "low")


def test_bad_rows_are_skipped_naming_row_video_and_reason(tmp_path):
  bad = [
      "not an object",
      dict(question="q", options=["a", "b"], answer="a"),                        # no video
      dict(video="/abs/x.mp4", question="q", options=["a", "b"], answer="a"),
      dict(video="../x.mp4", question="q", options=["a", "b"], answer="a"),
      dict(video="v.mp4", options=["a", "b"], answer="a"),                       # no question
      dict(video="v.mp4", question="q", options="a,b", answer="a"),
      dict(video="v.mp4", question="q", options=["a"], answer="a"),
      dict(video="v.mp4", question="q", options=["Yes", "yes."], answer="A"),
      dict(video="v.mp4", question="q", options=["a", "b"], answer="c"),
      dict(video="v.mp4", question="q", options=["a", "b"], answer="C"),       # past the last
      dict(video="v.mp4", question="see <image>", options=["a", "b"], answer="a"),
      dict(video="v.mp4", question="q", options=["a", "b"], answer=True),
      dict(video="v.mp4", question="q", options=["a", "b"], answer="a", id="x"),
      dict(video="w.mp4", question="q", options=["a", "b"], answer="b", id="x"),  # same id
  ]
  questions, skipped = qa.read(_write(tmp_path / "q.json", bad))
  assert [q.row for q in questions] == [12]
  kinds = {s.row: s.kind for s in skipped}
  assert kinds == {0: qa.MALFORMED, 1: qa.MALFORMED, 2: qa.MALFORMED, 3: qa.MALFORMED,
                   4: qa.MALFORMED, 5: qa.MALFORMED, 6: qa.MALFORMED, 7: qa.MALFORMED,
                   8: qa.ANSWER_NOT_IN_OPTIONS, 9: qa.ANSWER_NOT_IN_OPTIONS, 10: qa.MALFORMED,
                   11: qa.ANSWER_NOT_IN_OPTIONS, 13: qa.DUPLICATE_ID}
  detail = {s.row: s.detail for s in skipped}
  assert detail[8].startswith("row 8 (v.mp4): answer 'c' is neither one of the options")
  assert "escapes" in detail[3] and "absolute" in detail[2] and "<image>" in detail[10]
  assert "repeat" in detail[7] and "duplicate id 'x'" in detail[13]


def test_a_file_that_is_not_a_question_list_names_itself(tmp_path):
  p = tmp_path / "q.json"
  p.write_text('{"annotations": []}')
  with pytest.raises(ValueError, match=r"q\.json: expected a JSON list"):
    qa.read(str(p))
  p.write_text("[{")
  with pytest.raises(ValueError, match=r"q\.json: not valid JSON"):
    qa.read(str(p))


def test_build_writes_questions_in_file_order_and_skips_bad_rows(clips, tmp_path, caplog):
  root, videos, _ = clips
  rows = GOOD[:2] + [dict(video="missing.mp4", question="q", options=["a", "b"], answer="a"),
                     dict(video="synthetic_00000.mp4", question="q", options=["a", "b"],
                          answer="z")] + GOOD[2:]
  path = _write(tmp_path / "q.json", rows)
  with caplog.at_level(logging.WARNING, logger=qa.__name__):
    rep = qa.build("my_qa", path, videos, str(tmp_path / "tfds"), T, S, progress=False)
  assert (rep["question_rows"], rep["ok"], rep["videos"], rep["reused"]) == (6, 4, 3, False)
  assert rep["skipped_by_kind"] == {"answer_not_in_options": 1, "missing_file": 1}
  assert [s["row"] for s in rep["skipped"]] == [2, 3]
  assert "row 2 (missing.mp4): missing file" in caplog.text and "row 3" in caplog.text
  assert json.loads((tmp_path / "tfds/video_qa/my_qa_3x28/qa_build_report.json").read_text()
                    )["ok"] == 4
  src = qa.data_source(tmp_path / "tfds", "my_qa", T, S)
  recs = [src[i] for i in range(len(src))]
  assert [r["question_id"].decode() for r in recs] == ["0", "q-noise", "4", "5"]
  assert [int(r["answer"]) for r in recs] == [2, 1, 0, 2]
  assert [r["options"].tolist() for r in recs][1] == [b"Yes", b"No"]
  assert recs[2]["type"] == b"2" and recs[3]["type"] == qa.UNTYPED.encode()
  want = decode.decode(os.path.join(videos, "synthetic_00001.mp4"), T, S).frames_TxHxWx3
  assert recs[1]["frames"].shape == (T, S, S, 3)
  np.testing.assert_array_equal(recs[1]["frames"], want)
  np.testing.assert_array_equal(recs[2]["frames"], want)  # same video, same frames
  # Same inputs: reused; a changed file: rebuilt.
  assert qa.build("my_qa", path, videos, str(tmp_path / "tfds"), T, S, progress=False)["reused"]
  rep = qa.build("my_qa", _write(tmp_path / "q.json", GOOD[:2]), videos, str(tmp_path / "tfds"),
                 T, S, progress=False)
  assert not rep["reused"] and len(qa.data_source(tmp_path / "tfds", "my_qa", T, S)) == 2
  assert "my_qa: 2 of 2 questions over 2 videos" in qa.summary(rep)


def test_build_with_nothing_usable_fails_after_writing_its_report(clips, tmp_path):
  _, videos, _ = clips
  path = _write(tmp_path / "q.json", [dict(video="nope.mp4", question="q", options=["a", "b"],
                                           answer="a")])
  with pytest.raises(qa.BuildError, match="no usable question in 1 rows.*nope.mp4"):
    qa.build("bad_qa", path, videos, str(tmp_path / "tfds"), T, S, progress=False)
  rep = json.loads((tmp_path / "tfds/video_qa/bad_qa_3x28/qa_build_report.json").read_text())
  assert rep["skipped_by_kind"] == {"missing_file": 1}
  with pytest.raises(FileNotFoundError, match="question file not found"):
    qa.build("bad_qa", str(tmp_path / "none.json"), videos, str(tmp_path), T, S)
  with pytest.raises(ValueError, match="lower-case"):
    qa.build("Bad", path, videos, str(tmp_path), T, S)


# ----------------------------------------------------------------------------- synthetic

def _fake_distortions(n, seed=0):
  rng = np.random.default_rng(seed)
  return {f"synthetic_{i:05d}.mp4": synthetic.draw_levels(rng) for i in range(n)}


def test_strongest_takes_the_highest_level_then_the_larger_weight():
  z = dict.fromkeys(synthetic.WEIGHTS, 0)
  assert qa.strongest(z) is None
  assert qa.strongest(dict(z, noise=2, blur=1)) == "noise"
  assert qa.strongest(dict(z, noise=2, blur=2)) == "blur"  # weight 1.2 > 1.0
  assert qa.strongest(dict(z, exposure=3, stutter=3)) == "exposure"  # equal weights: order


def test_synthetic_questions_are_deterministic_and_well_formed():
  dist = _fake_distortions(200)
  qs = qa.synthetic_questions(dist, seed=3)
  assert qs == qa.synthetic_questions(dict(reversed(dist.items())), seed=3)
  assert qs != qa.synthetic_questions(dist, seed=4)
  by_text = {v: k for k, v in qa.OPTION_TEXT.items()}
  positions = []
  for q in qs:
    levels = dist[q["video"]]
    answer = qa.strongest(levels) or qa.NONE
    assert q["answer"] == qa.OPTION_TEXT[answer] and q["type"] == "distortion:" + answer
    assert q["question"] == qa.SYNTHETIC_QUESTION
    assert len(q["options"]) == 4 == len(set(q["options"]))
    kinds = [by_text[o] for o in q["options"]]
    assert qa.NONE in kinds and answer in kinds
    # No other option is also right: the distractors are kinds the clip does not have.
    assert all(levels[k] == 0 for k in kinds if k not in (answer, qa.NONE))
    positions.append(q["options"].index(q["answer"]))
    assert qa.parse_row(q, 0).answer == positions[-1]  # the public format reads it back
  assert set(positions) == {0, 1, 2, 3}  # shuffled
  assert np.bincount(positions).min() > 30  # roughly uniform over 200 questions
  assert any(q["type"] == "distortion:none" for q in qs)


def test_synthetic_questions_per_clip_and_option_counts(tmp_path):
  dist = _fake_distortions(20)
  ids = sorted(dist)[:5]
  some = qa.synthetic_questions(dist, video_ids=ids)
  assert [q["video"] for q in some] == ids
  # A clip's question does not depend on the other clips.
  assert some == [q for q in qa.synthetic_questions(dist) if q["video"] in ids]
  assert all(len(q["options"]) == 2 for q in qa.synthetic_questions(dist, num_options=2))
  full = qa.synthetic_questions(dist, num_options=qa.MAX_OPTIONS)
  for q in full:  # every kind the clip lacks, "none", and the answer
    active = sum(v > 0 for v in dist[q["video"]].values())
    assert len(q["options"]) == qa.MAX_OPTIONS - max(active - 1, 0)
  with pytest.raises(ValueError, match="num_options"):
    qa.synthetic_questions(dist, num_options=1)
  with pytest.raises(ValueError, match="no distortion levels"):
    qa.synthetic_questions(dist, video_ids=["other.mp4"])
  src = tmp_path / "distortions.json"
  src.write_text(json.dumps(dist))
  out = qa.write_synthetic_questions(src, tmp_path / "q.json", video_ids=ids)
  assert json.loads(open(out).read()) == some
  mtime = os.stat(out).st_mtime_ns
  qa.write_synthetic_questions(src, tmp_path / "q.json", video_ids=ids)
  assert os.stat(out).st_mtime_ns == mtime  # unchanged: not rewritten, the build reuses


def test_synthetic_questions_build_end_to_end(clips, tmp_path):
  root, videos, dist = clips
  path = qa.write_synthetic_questions(root / "distortions.json", tmp_path / "q.json")
  rep = qa.build("synthetic_qa", path, videos, str(tmp_path / "tfds"), T, S, progress=False)
  assert rep["ok"] == len(dist) == 3 and rep["skipped"] == []
  src = qa.data_source(tmp_path / "tfds", "synthetic_qa", T, S)
  for i in range(len(src)):
    r = src[i]
    want = qa.strongest(dist[r["video_id"].decode()]) or qa.NONE
    assert r["options"][int(r["answer"])].decode() == qa.OPTION_TEXT[want]
