"""benchmarks/table.py: the README's table is the one the committed JSON gives."""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import table  # noqa: E402


def test_readme_table_is_generated_from_the_committed_json():
  assert table.main(["--check"]) == 0


def test_a_row_per_comparison_with_its_provenance(tmp_path):
  side = {"median_s": 2.0, "q1_s": 1.9, "q3_s": 2.1, "runs_s": [1.9, 2.0, 2.1]}
  where = {"cpu_model": "CPU X", "datetime": "2026-12-06T10:00:00+00:00", "commit": "abc1234",
           "cores": [0, 1]}
  (tmp_path / "r.json").write_text(json.dumps({
      **where, "command": "benchmarks/rollout.py --shape internvl3_1b", "shape": "internvl3_1b",
      "dtype": "float32", "batch": {"videos": 2, "generations": 4, "prompt_tokens": 1696,
                                    "frames": 6, "new_tokens": 256},
      "ours_sample": side, "hf_sample": dict(side, median_s=6.0), "speedup_sample": 3.0}))
  (tmp_path / "other.json").write_text(json.dumps({"command": "benchmarks/scaling.py"}))
  text = table.table(tmp_path)
  rows = text.splitlines()[2:]
  assert len(rows) == 1 and "**3.0×**" in rows[0] and "abc1234" in rows[0]
  assert "CPU X, 2 core(s); 2026-12-06" in rows[0] and "internvl3_1b, float32" in rows[0]
