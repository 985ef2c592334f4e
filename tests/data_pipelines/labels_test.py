"""Label files: formats, bad rows as named problems, MOS scale, split rule."""

import json
import os
import pathlib

import pytest

from data_pipelines import labels

LABELS_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "labels"


def _json(tmp_path, rows):
  path = tmp_path / "labels.json"
  path.write_text(json.dumps({"annotations": rows}))
  return path


def test_reads_reference_json_and_csv(tmp_path):
  got, problems = labels.read(_json(tmp_path, [
      {"image_id": "a.mp4", "score": "62.4"}, {"image_id": "sub/b.mp4", "score": 3}]))
  assert got == [labels.Label("a.mp4", 62.4), labels.Label("sub/b.mp4", 3.0)] and not problems
  csv = tmp_path / "labels.csv"
  csv.write_text("\ufeffvideo,mos\na.mp4,62.4\nsub/b.mp4, 3\n", encoding="utf-8")  # with a BOM
  assert labels.read(csv) == (got, [])


def test_bad_rows_become_named_problems_and_first_duplicate_wins(tmp_path):
  rows = [
      {"image_id": "good.mp4", "score": "4.5"},
      {"image_id": "good.mp4", "score": "1.0"},  # duplicate
      {"image_id": "nan.mp4", "score": "NaN"},
      {"image_id": "inf.mp4", "score": "inf"},
      {"image_id": "text.mp4", "score": "great"},
      {"image_id": "null.mp4", "score": None},
      {"image_id": "bool.mp4", "score": True},
      {"image_id": "../up.mp4", "score": "3"},
      {"image_id": "a/../../up.mp4", "score": "3"},
      {"image_id": "/etc/passwd", "score": "3"},
      {"image_id": "C:\\v.mp4", "score": "3"},
      {"image_id": "", "score": "3"},
      {"score": "3"},
      "not an object",
      {"image_id": "also_good.mp4", "score": 2},
  ]
  got, problems = labels.read(_json(tmp_path, rows))
  assert got == [labels.Label("good.mp4", 4.5), labels.Label("also_good.mp4", 2.0)]
  kinds = [p.kind for p in problems]
  assert kinds == [labels.DUPLICATE_ID] + [labels.BAD_SCORE] * 5 + [labels.ESCAPES_FOLDER] * 2 + [
      labels.ABSOLUTE_PATH] * 2 + [labels.EMPTY_ID] * 3
  assert len(got) + len(problems) == len(rows)
  assert problems[0].video_id == "good.mp4" and "first occurrence kept" in problems[0].detail


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('{"items": []}', "annotations"),
])
def test_unreadable_label_file_names_itself(tmp_path, content, match):
  path = tmp_path / "x.json"
  path.write_text(content)
  with pytest.raises(ValueError, match=match) as e:
    labels.read(path)
  assert str(path) in str(e.value)


def test_csv_without_the_columns_is_named(tmp_path):
  path = tmp_path / "x.csv"
  path.write_text("name,value\na,1\n")
  with pytest.raises(ValueError, match="video,mos"):
    labels.read(path)


def test_normalise_maps_the_scale_onto_one_to_five():
  assert labels.normalise(0.0, 0.0, 100.0) == 1.0
  assert labels.normalise(100.0, 0.0, 100.0) == 5.0
  assert labels.normalise(62.5, 0.0, 100.0) == 3.5  # exact in binary
  assert labels.normalise(7.0, 1.0, 5.0) == 5.0  # clipped


def test_mos_range_and_out_of_range_scores():
  bench = labels.benchmark("konvid_1k")
  rows = [labels.Label("a", 50.0), labels.Label("b", 101.0), labels.Label("c", -1.0)]
  inside, problems = labels.check_range(bench, rows)
  assert inside == rows[:1] and [p.kind for p in problems] == [labels.SCORE_OUT_OF_RANGE] * 2
  assert labels.mos_range(bench, inside) == (0.0, 100.0)
  minmax = labels.benchmark("my_set")
  assert labels.mos_range(minmax, rows) == (-1.0, 101.0)
  assert labels.check_range(minmax, rows) == (rows, [])
  assert labels.mos_range(minmax, rows[:1]) == (49.0, 51.0)  # one distinct score: no 0/0


def test_benchmark_overrides_and_validation():
  b = labels.benchmark("youtube_ugc", mos_range=("0", "10"), split="hash:0.5")
  assert (b.mos_range, b.split) == ((0.0, 10.0), "hash:0.5")
  bad_args = [dict(name="Bad Name"), dict(name="x", mos_range=(5, 1)), dict(name="x", split="h")]
  for bad in bad_args:
    with pytest.raises(ValueError):
      labels.benchmark(**bad)


def test_hash_split_is_stable_and_near_its_fraction():
  bench = labels.benchmark("synthetic")  # hash:0.25
  ids = [f"v{i}.mp4" for i in range(2000)]
  splits = [labels.split_of(bench, i) for i in ids]
  assert splits == [labels.split_of(bench, i) for i in ids]
  assert 0.21 < splits.count("test") / len(ids) < 0.29
  assert labels.split_of(labels.benchmark("lsvq_train"), "x") == "train"
  assert labels.split_of(labels.benchmark("kvq"), "x") == "test"


@pytest.mark.skipif(not LABELS_DIR.is_dir(), reason="reference label files not present")
def test_reference_label_files_parse_cleanly_inside_their_scales():
  names = {"Konvid-1k_total_ds_score.json": "konvid_1k", "youtube_ugc_total.json": "youtube_ugc",
           "LSVQ_whole_test_ds_score.json": "lsvq_test", "CGVDS_total_score.json": "cgvds",
           "Waterloo_IVC_4K_total_score.json": "waterloo_ivc_4k"}
  for file, name in names.items():
    got, problems = labels.read(os.path.join(LABELS_DIR, file))
    assert got and not problems, file
    inside, out = labels.check_range(labels.benchmark(name), got)
    assert not out, (file, out[:3])
