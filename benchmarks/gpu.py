"""Our 1B-shaped GRPO step and rollout on one accelerator, against the card's limits.

  python benchmarks/gpu.py [--ckpt DIR --videos 4 --generations 4 --new_tokens 256
      --frames 6 --steps 5 --out FILE.json]            (benchmarks/gpu.sh runs it)

The InternVL3-1B-shaped random checkpoint (benchmarks/shapes.py; written first unless
`--ckpt`), bfloat16 compute with float32 master weights, `videos` videos of `frames` 448 px
frames (~1,700-token prompts), G completions of exactly `new_tokens` tokens. Each contender
runs alone in its own process (`_timing.isolated`, sequential: an accelerator's memory is
not shared between processes), after one untimed call (the compile):

  ours            one jitted GRPO step (rollout -> reward -> update; beta 0, as TRL's
                  default, so no reference pass), grpo_ours.ours;
  ours_rollout    the rollout alone; ours_rollout_1 the same with one new token (prefill);
  matmul_peak     an 8192^3 bfloat16 matmul (the MFU's measured denominator);
  copy_bandwidth  y = 2x over 2 GiB of float32 in device memory (bytes read + written).

Reports the update's model FLOPs (`shapes.update_flops`) per second of (step - rollout)
against the measured matmul peak and the card's nominal bf16 dense peak, and one decode
step's least bytes (`shapes.decode_bytes`, bf16) per second against the measured copy
bandwidth and the card's nominal HBM bandwidth (`--peak_tflops`, `--hbm_tbs`: H100 SXM
989 TFLOP/s, 3.35 TB/s). Prints one JSON object (and writes it to `--out`).
"""

from __future__ import annotations

import pathlib
import shutil
import statistics
import sys
import tempfile

from absl import app
from absl import flags

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests"), str(_ROOT / "benchmarks")]

import _timing  # noqa: E402  (benchmarks/, beside this file)

_SHAPE = flags.DEFINE_enum("shape", "internvl3_1b", ["tiny", "internvl3_1b"],
                           "the model (benchmarks/shapes.py); tiny: a smoke run anywhere")
_CKPT = flags.DEFINE_string("ckpt", "", "a checkpoint of --shape (default: a fresh random one "
                            "in a temporary folder)")
_VIDEOS = flags.DEFINE_integer("videos", 4, "videos per GRPO step")
_GENERATIONS = flags.DEFINE_integer("generations", 4, "completions per video (G)")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 256, "tokens per completion (C)")
_FRAMES = flags.DEFINE_integer("frames", 6, "448 px frames per video")
_TEXT = flags.DEFINE_integer("text", 80, "text tokens either side of the frames")
_STEPS = flags.DEFINE_integer("steps", 5, "timed calls of each contender")
_LOW_MEMORY = flags.DEFINE_bool("low_memory", False, "layers recomputed, ViT blocks and "
                                "decoder layers scanned (for a card with less memory)")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 8192, "side of the bf16 matmul (the peak)")
_COPY_MIB = flags.DEFINE_integer("copy_mib", 2048, "MiB scaled in device memory (bandwidth)")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "the card's nominal bf16 dense peak")
_HBM = flags.DEFINE_float("hbm_tbs", 3.35, "the card's nominal memory bandwidth (TB/s)")
_OUT = flags.DEFINE_string("out", "", "also write the JSON here")


def main(_):
  from grpo_ours import ours
  from shapes import SHAPES, decode_bytes, make_checkpoint, prompt_batch, update_flops
  shape = SHAPES[_SHAPE.value]
  B, G, C, T = _VIDEOS.value, _GENERATIONS.value, _NEW_TOKENS.value, _FRAMES.value
  work_dir = pathlib.Path(tempfile.mkdtemp(prefix="gpu_bench_"))
  ckpt = _CKPT.value or str(make_checkpoint(shape, work_dir / "checkpoint"))
  ids, pix = prompt_batch(shape, B, T, _TEXT.value)
  P, S = ids.shape[1], shape.frame_px
  pix = pix.reshape(B * T, S, S, 3).transpose(0, 3, 1, 2)  # as a processor gives them
  work = dict(videos=B, generations=G, new_tokens=C, frames=T, size=S, beta=0.0,
              loss_type="grpo", learning_rate=1e-6, top_k=50, shape=shape.name,
              low_memory=_LOW_MEMORY.value, dtype="bfloat16")
  kw = dict(ckpt=ckpt, ids=ids, pix=pix)
  contenders = {
      "ours": (ours, dict(kw, work=work)),
      "ours_rollout": (ours, dict(kw, work=work, rollout_only=True)),
      "ours_rollout_1": (ours, dict(kw, work=dict(work, new_tokens=1), rollout_only=True)),
      "matmul_peak": (_timing.matmul_call, dict(n=_MATMUL_N.value, dtype="bfloat16")),
      "copy_bandwidth": (_timing.copy_call, dict(mib=_COPY_MIB.value, on="jax")),
  }
  r = _timing.isolated(contenders, _STEPS.value, sequential=True, cores=None)
  shutil.rmtree(work_dir, ignore_errors=True)
  med = {name: statistics.median(ts) for name, ts in r["times_s"].items()}
  limits = _timing.roofline(r)
  flops = update_flops(shape, B, G, P, C, T, 0.0)
  u = _timing.update_rate(med["ours"], med["ours_rollout"], flops, limits)
  moved = decode_bytes(shape, 2, B, G, P, C)
  d = _timing.decode_step(med["ours_rollout"], med["ours_rollout_1"], C, moved, limits)
  # At a smoke run's tiny sizes the differences can be noise (<= 0): the rates are then None.
  rate = lambda x, per=1.0: None if x is None else round(x / per, 1)
  import jax
  report = {
      **_timing.provenance(), "device": jax.devices()[0].device_kind, "jax": jax.__version__,
      "shape": shape.name, "dtype": "bfloat16 compute, float32 parameters",
      "batch": {"videos": B, "generations": G, "new_tokens": C, "frames_per_video": T,
                "frame_px": S, "prompt_tokens": P, "low_memory": _LOW_MEMORY.value, "beta": 0.0},
      "load_by_contender": r["load_by_contender"], **limits,
      **{name: {**_timing.summary(r["times_s"][name], 4),
                "first_call_s": round(r["first_s"][name], 2)}
         for name in ("ours", "ours_rollout", "ours_rollout_1")},
      "update": {"seconds": round(u["update_s"], 4),
                 "model_tflops": float(f"{flops / 1e12:.4g}"),
                 "tflops_per_s": rate(u["gflops_per_s"], 1e3),
                 "fraction_of_measured_peak": rate(u["fraction_of_matmul_peak"]),
                 "mfu_nominal": rate(u["gflops_per_s"], 1e3 * _PEAK.value)},
      "decode_step": {"seconds": round(d["step_s"], 6), "least_bytes_gb": round(moved / 1e9, 4),
                      "gb_per_s": rate(d["gb_per_s"]),
                      "fraction_of_measured_bandwidth": rate(d["fraction_of_copy_bandwidth"]),
                      "fraction_of_nominal_hbm": rate(d["gb_per_s"], 1e3 * _HBM.value)},
      "nominal": {"bf16_dense_tflops": _PEAK.value, "hbm_tbs": _HBM.value},
  }
  _timing.emit(report, _OUT.value)


if __name__ == "__main__":
  app.run(main)
