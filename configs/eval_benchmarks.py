"""Evaluate a trained VQAThinker on all 11 docs/method.md §5 benchmarks (12 frames at 560, greedy).

`--config configs/eval_benchmarks.py` uses the 8B run's model and mesh (v5p-64);
`--config configs/eval_benchmarks.py:1b` the 1B sibling's (v5p-16). Every set must be
built at 12x560 in data.data_dir (`python -m data_pipelines.prepare --frames 12 --size 560`).
"""

import pathlib
import runpy

RUNS = {"8b": "internvl3_8b_lsvq.py", "1b": "internvl3_1b_lsvq.py"}
# docs/method.md §5: in-domain, then out-of-distribution (names of data_pipelines/labels.py BENCHMARKS).
SETS = ("lsvq_test", "lsvq_1080p", "konvid_1k", "live_vqc", "youtube_ugc",
        "live_yt_gaming", "cgvds", "live_yt_hfr", "waterloo_ivc_4k", "vdpve", "kvq")


def get_config(arg: str = "8b"):
  if arg not in RUNS:
    raise ValueError(f"eval_benchmarks.py:{arg}: expected one of {sorted(RUNS)}")
  run = runpy.run_path(str(pathlib.Path(__file__).with_name(RUNS[arg])))
  c = run["get_config"]()
  c.mode = "eval"  # greedy rollouts on eval.sets, then the SRCC/PLCC report
  # Placeholder: a trained checkpoint (ours, or the release); it carries SlowFast itself.
  c.model.checkpoint = f"/data/ckpt/VQAThinker-{arg.upper()}"
  c.model.slowfast_weights = ""  # the checkpoint's own SlowFast
  c.model.param_dtype = "bfloat16"  # no updates: bf16 storage halves the weights' memory
  e = c.eval
  e.sets = ",".join(SETS)  # all 11 benchmarks
  e.split = "test"  # every benchmark is wholly its test split
  e.frames = 12  # docs/method.md §5
  e.size = 560  # docs/method.md §5 (position embeddings resized to the 40x40 grid)
  e.max_new_tokens = 1024  # greedy generation limit (docs/method.md §5)
  e.max_videos = 0  # every video
  # The release's batch_infer.py prompt and parse, so that scores compare with its numbers
  # (docs/method.md §7); the failure rate under the lenient parse is reported beside.
  e.prompt_layout = "reference_eval"
  e.parse = "reference"
  return c
