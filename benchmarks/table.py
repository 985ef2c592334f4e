"""The like-for-like table of benchmarks/README.md, generated from the committed JSON.

  python benchmarks/table.py            # rewrite the table between the README's markers
  python benchmarks/table.py --check    # exit 1 if the README's table is not the JSON's

Reads every `benchmarks/results/*.json` written by `rollout.py` or `grpo_vs_trl.py` (their
`command` field says which) and makes one row per file: what was compared, the model shape,
dtype and batch, each side's median time with its quartiles, the speed-up, the share of
the machine's limits measured in the same run (matmul peak, copy bandwidth), and where and
when: CPU model, date, commit.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent
BEGIN, END = "<!-- table:begin (benchmarks/table.py) -->", "<!-- table:end -->"
HEADER = ("| comparison | model, dtype | work per call | ours: median s (q1–q3) "
          "| peer: median s (q1–q3) | **speed-up** | share of the machine's limits "
          "| machine, date, commit | JSON |\n|---|---|---|---|---|---|---|---|---|")


def _t(side: dict) -> str:
  return f"{side['median_s']:.4g} ({side['q1_s']:.4g}–{side['q3_s']:.4g}), n {len(side['runs_s'])}"


def _where(r: dict) -> str:
  cores = len(r.get("cores", [])) or "?"
  return f"{r['cpu_model']}, {cores} core(s); {r['datetime'][:10]}; {r['commit']}"


def _grpo_row(r: dict, name: str) -> str:
  b, o = r["batch"], r["ours"]
  work = (f"{b['videos']} videos × G {b['generations']}, {b['prompt_tokens']}-token prompts "
          f"({b['frames_per_video']} × {b['frame_px']} px), {b['new_tokens']} new tokens; "
          f"β {r['training']['beta']}")
  limits = []
  if "fraction_of_matmul_peak" in o.get("update", {}):
    limits.append(f"update {o['update']['gflops_per_s']} GFLOP/s = "
                  f"{o['update']['fraction_of_matmul_peak']:.0%} of the matmul peak "
                  f"({r['matmul_peak_gflops']['median_gflops']} GFLOP/s)")
  if "fraction_of_copy_bandwidth" in o.get("decode_step", {}):
    d = o["decode_step"]
    limits.append(f"decode step {d['gb_per_s']} GB/s = {d['fraction_of_copy_bandwidth']:.0%} "
                  f"of copy bandwidth ({r['copy_bandwidth_gbs']['median_gbs']} GB/s)")
  setup = "each alone in turn" if "alone in turn" in r["setup"] else "interleaved"
  speedup = f"**{r['speedup']}×**"
  if "speedup_rollout" in r:
    speedup += f" (rollout {r['speedup_rollout']}×)"
  return (f"| GRPO step vs TRL `GRPOTrainer` ({setup}) | {r.get('shape', 'tiny')}, "
          f"{r['training']['dtype']} | {work} | {_t(o)} | {_t(r['trl'])} | {speedup} | "
          f"{'; '.join(limits) or '—'} | {_where(r)} | `{name}` |")


def _rollout_rows(r: dict, name: str) -> list[str]:
  b = r["batch"]
  work = (f"{b['videos']} videos × G {b['generations']}, {b['prompt_tokens']}-token prompts "
          f"({b['frames']} frames), {b['new_tokens']} new tokens")
  rows = []
  for mode in ("sample", "greedy"):
    if f"ours_{mode}" not in r:
      continue
    limits = []
    d = r.get("ours_decode_step", {})
    if d.get("mode") == mode and "fraction_of_copy_bandwidth" in d:
      limits.append(f"decode step {d['gb_per_s']} GB/s = {d['fraction_of_copy_bandwidth']:.0%} "
                    f"of copy bandwidth ({r['copy_bandwidth_gbs']['median_gbs']} GB/s)")
    rows.append(
        f"| rollout vs `transformers.generate`, {mode} | {r.get('shape', 'tiny')}, "
        f"{r.get('dtype', 'float32')} | {work} | {_t(r[f'ours_{mode}'])} | "
        f"{_t(r[f'hf_{mode}'])} | **{r[f'speedup_{mode}']}×** | {'; '.join(limits) or '—'} | "
        f"{_where(r)} | `{name}` |")
  return rows


def table(results: pathlib.Path = ROOT / "results") -> str:
  rows = []
  for path in sorted(results.glob("*.json")):
    r = json.loads(path.read_text())
    command = r.get("command", "")
    if command.startswith("benchmarks/grpo_vs_trl.py"):
      rows.append(_grpo_row(r, path.name))
    elif command.startswith("benchmarks/rollout.py"):
      rows.extend(_rollout_rows(r, path.name))
  return "\n".join([HEADER, *rows])


def main(argv: list[str]) -> int:
  readme = ROOT / "README.md"
  text = readme.read_text()
  if BEGIN not in text or END not in text:
    print(f"{readme}: no {BEGIN} ... {END} markers", file=sys.stderr)
    return 2
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  new = f"{head}{BEGIN}\n{table()}\n{END}{tail}"
  if "--check" in argv:
    if new != text:
      print(f"{readme}: the table is not the one the JSON gives; run benchmarks/table.py",
            file=sys.stderr)
      return 1
    return 0
  readme.write_text(new)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
