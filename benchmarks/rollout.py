"""Rollout throughput: our jitted prefill + fan-out + decode loop vs `transformers.generate`.

  python benchmarks/rollout.py [--cores 1 --videos 8 --generations 4 --new_tokens 64
      --frames 2 --text 16 --runs 30 --burst 3 --out FILE.json --xla_flags=...]
  python benchmarks/rollout.py --shape internvl3_1b --cores 2 --ours_devices 1 --videos 2 \
      --frames 6 --text 80 --new_tokens 256 --modes sample --runs 2 --burst 1 \
      --peer_warmup 0 --split --roofline --out FILE.json     # real shapes (~40 min here)

Both run the same random InternVL checkpoint of `--shape` (benchmarks/shapes.py: tiny, or
InternVL3-1B's widths and depths) on the same prompts (`videos` prompts, `frames` frames
each, `text` text tokens either side), in `--dtype` on both sides, sampling
with temperature 1 and top-k 50 (docs/method.md §4), exactly `new_tokens` tokens per
completion (no stop ids), and greedily. transformers gets each prompt repeated G times (as
the reference rolls out); ours prefills each prompt once and shares its cache among the G
samples (`rollout.cached_generate`).

Like for like (`_timing.isolated`): each contender runs in its own process, all pinned to
the same `cores` cores: torch with that many intra-op threads, ours with the batch split
over that many JAX host devices (on CPU XLA runs one program on about one core, so the
cores are used as devices, as on an accelerator host). Calls come in a random order per
round, so every contender follows every other about equally often. Rates are medians over
`runs` with quartiles; our compile time (first call minus the median) is reported apart.
With `--split`, a 1-token rollout (the prefill) is timed too, and the decode step's time,
(rollout - prefill) / (new_tokens - 1), is set against the least bytes it must move
(`shapes.decode_bytes`) and, with `--roofline`, against a memory copy's bandwidth measured
in the same run (a float32 matmul's rate too). Prints one JSON object (and writes it to
`--out`) with the provenance: date, CPU model, commit, command, load.
"""

from __future__ import annotations

import os
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

_CORES = flags.DEFINE_integer("cores", 1, "cores each contender is pinned to (torch threads, "
                              "our host devices)")
_VIDEOS = flags.DEFINE_integer("videos", 8, "prompts (videos) per batch")
_GENERATIONS = flags.DEFINE_integer("generations", 4, "completions per prompt (G)")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "tokens generated per completion")
_SHAPE = flags.DEFINE_enum("shape", "tiny", ["tiny", "internvl3_1b"],
                           "the model (benchmarks/shapes.py): tiny (56 px frames, 4 visual "
                           "tokens each), or InternVL3-1B's widths and depths (random weights, "
                           "448 px frames, 256 visual tokens each)")
_CKPT = flags.DEFINE_string("ckpt", "", "an existing checkpoint of --shape (default: a fresh "
                            "random one in a temporary folder)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "weights and compute dtype of both sides")
_DEVICES = flags.DEFINE_integer("ours_devices", 0, "JAX host devices of ours (0: one per core; "
                                "1: one device, XLA's threads on the cores)")
_MODES = flags.DEFINE_list("modes", ["sample", "greedy"], "sample and/or greedy")
_PEER_WARMUP = flags.DEFINE_integer("peer_warmup", 1, "untimed first calls of transformers' "
                                    "(0: its first call is timed too: it compiles nothing)")
_SPLIT = flags.DEFINE_bool("split", False, "also time our 1-token rollout (the prefill): the "
                           "decode step = (rollout - prefill) / (new_tokens - 1)")
_ROOFLINE = flags.DEFINE_bool("roofline", False, "also time a float32 matmul and a memory copy "
                              "as contenders (the machine's limits, in the same run)")
_FRAMES = flags.DEFINE_integer("frames", 2, "frames per video")
_TEXT = flags.DEFINE_integer("text", 16, "text tokens before and after the frames")
_TOP_K = flags.DEFINE_integer("top_k", 50, "top-k of both samplers")
_RUNS = flags.DEFINE_integer("runs", 30, "timed runs of each")
_BURST = flags.DEFINE_integer(
    "burst", 3, "runs of a contender in a row per round (all timed): rollouts come in a "
    "stream, and a call right after another program's runs slower on a small VM")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the call order")
_OUT = flags.DEFINE_string("out", "", "also write the JSON here")


def ours(path: str, cores: int, greedy: bool, batch: dict):
  """Our contender (in its own process): the cached rollout over `cores` host devices."""
  import jax
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec
  from shapes import SHAPES, prompt_batch
  from vqathinker_jax import model
  from vqathinker_jax.model import sharding
  from grpo_ours import as_in_training
  from vqathinker_jax.rl import rollout
  as_in_training(jax)
  devices = jax.devices()[:cores] if jax.default_backend() == "cpu" else jax.devices()[:1]
  mesh = sharding.make_mesh({"data": len(devices)}, devices)
  m, _ = model.from_pretrained(path, dtype=batch["dtype"], mesh=mesh)
  ids, pix = prompt_batch(SHAPES[batch["shape"]], batch["videos"], batch["frames"],
                          batch["text"])
  # Placed once, split over the batch (as transformers' tensors are made once).
  inputs = jax.device_put((ids, np.ones_like(ids), pix.astype(batch["dtype"])),
                          NamedSharding(mesh, PartitionSpec("data")))
  run = rollout.cached_generate(m)

  def call(seed):
    with jax.set_mesh(mesh):
      out = run(*inputs, rng=jax.random.key(seed), num_generations=batch["generations"],
                max_new_tokens=batch["new_tokens"], temperature=1.0, top_k=batch["top_k"],
                greedy=greedy, stop_ids=())
      return list(jax.block_until_ready(out)["tokens_NC"].shape)
  return call


def transformers_generate(path: str, cores: int, greedy: bool, batch: dict):
  """The peer (in its own process): `generate` with `cores` intra-op threads."""
  import numpy as np
  import torch
  from shapes import SHAPES, prompt_batch
  from transformers import InternVLForConditionalGeneration
  torch.set_num_threads(cores)
  dtype = getattr(torch, batch["dtype"])
  hf = InternVLForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
  G, C = batch["generations"], batch["new_tokens"]
  ids, pix = prompt_batch(SHAPES[batch["shape"]], batch["videos"], batch["frames"],
                          batch["text"])
  ids_t = torch.tensor(np.repeat(ids, G, 0)).long()
  pix_t = torch.tensor(np.repeat(pix, G, 0).reshape(-1, *pix.shape[2:]).transpose(0, 3, 1, 2)
                       .copy()).to(dtype)
  sampling = {} if greedy else dict(temperature=1.0, top_k=batch["top_k"], top_p=1.0)

  def call(seed):
    torch.manual_seed(seed)
    with torch.no_grad():
      out = hf.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
                        pixel_values=pix_t, do_sample=not greedy, max_new_tokens=C,
                        min_new_tokens=C, pad_token_id=0, eos_token_id=None, **sampling)
    return list(out[:, ids.shape[1]:].shape)
  return call


def main(_):
  from shapes import SHAPES, decode_bytes, make_checkpoint
  cores = sorted(os.sched_getaffinity(0))[:_CORES.value]
  if len(cores) < _CORES.value:
    raise app.UsageError(f"--cores={_CORES.value}: this process may use {len(cores)}")
  B, G, C, n = _VIDEOS.value, _GENERATIONS.value, _NEW_TOKENS.value, len(cores)
  devices = _DEVICES.value or n
  if B % devices:
    raise app.UsageError(f"--videos={B} does not split over {devices} devices")
  modes = [m for m in _MODES.value if m in ("sample", "greedy")]
  if not modes or len(modes) != len(_MODES.value):
    raise app.UsageError(f"--modes={_MODES.value}: sample and/or greedy")
  if _SPLIT.value and C < 2:
    raise app.UsageError("--split needs --new_tokens >= 2")
  shape = SHAPES[_SHAPE.value]
  work_dir = tempfile.mkdtemp(prefix="rollout_bench_")
  # One checkpoint for every contender.
  path = _CKPT.value or str(make_checkpoint(shape, pathlib.Path(work_dir) / "checkpoint"))
  batch = dict(videos=B, generations=G, new_tokens=C, frames=_FRAMES.value, text=_TEXT.value,
               top_k=_TOP_K.value, shape=shape.name, dtype=_DTYPE.value)
  env = {"OMP_NUM_THREADS": str(n), "XLA_FLAGS": " ".join(filter(None, [
      os.environ.get("XLA_FLAGS", ""), _timing.xla_flags_value(),
      f"--xla_force_host_platform_device_count={devices}"]))}
  contenders = {}
  for mode in modes:
    contenders[f"ours_{mode}"] = (ours, dict(path=path, cores=devices, batch=batch,
                                             greedy=mode == "greedy"))
    contenders[f"hf_{mode}"] = (transformers_generate, dict(path=path, cores=n, batch=batch,
                                                             greedy=mode == "greedy"))
  if _SPLIT.value:
    contenders["ours_prefill"] = (ours, dict(path=path, cores=devices, greedy=modes[0] == "greedy",
                                             batch=dict(batch, new_tokens=1)))
  if _ROOFLINE.value:
    contenders["matmul_peak"] = (_timing.matmul_call, dict(dtype=_DTYPE.value))
    contenders["copy_bandwidth"] = (_timing.copy_call, dict(threads=n))
  # transformers compiles nothing: with --peer_warmup 0 its first call is timed too.
  peer_w = max(1, _PEER_WARMUP.value) if _PEER_WARMUP.value else 0
  r = _timing.isolated(contenders, _RUNS.value, cores=cores, env=env, seed=_SEED.value,
                       burst=_BURST.value,
                       warmup={name: peer_w if name.startswith("hf_") else 1
                               for name in contenders})
  for name in contenders:
    if name.startswith(("ours_s", "ours_g", "hf_")):
      assert r["info"][name] == [B * G, C], (name, r["info"][name])
  shutil.rmtree(work_dir, ignore_errors=True)
  tokens = B * G * C
  P = 2 * _TEXT.value + shape.tokens_per_frame * _FRAMES.value
  med = {name: statistics.median(ts) for name, ts in r["times_s"].items()}
  limits = _timing.roofline(r)
  report = {
      **_timing.provenance(), "setup": "like for like: each contender in its own process, "
      f"pinned to the same {n} core(s): torch {n} thread(s), ours {devices} host device(s)",
      "shape": shape.name, "dtype": _DTYPE.value,
      "batch": dict(batch, prompt_tokens=P, generated_tokens=tokens),
      "cores": r["cores"], "env": env, "runs": _RUNS.value, "burst": _BURST.value,
      "warmup": r["warmup"], "order_seed": _SEED.value, "load_average": r["load_average"],
      "predecessors": r["predecessors"], **limits,
  }
  for name in contenders:
    if name in ("matmul_peak", "copy_bandwidth"):
      continue
    report[name] = _timing.summary(r["times_s"][name])
    if name != "ours_prefill":
      report[name]["tokens_per_s"] = round(tokens / med[name], 1)
    if name.startswith("ours"):
      report[name]["compile_s"] = round(r["first_s"][name] - med[name], 3)
  for mode in modes:
    ratios = [h / o for h, o in zip(r["times_s"][f"hf_{mode}"], r["times_s"][f"ours_{mode}"])]
    report[f"speedup_{mode}"] = round(med[f"hf_{mode}"] / med[f"ours_{mode}"], 2)
    # The spread: the ratio of the i-th calls of each side (same round), quartiles.
    q1, _, q3 = (statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1
                 else ratios * 3)
    report[f"speedup_{mode}_quartiles"] = [round(q1, 2), round(q3, 2)]
  if _SPLIT.value:
    # One decode step: the rollout less its prefill (a 1-token rollout), over C - 1 steps,
    # against the least bytes it must move (shapes.decode_bytes: weights, K/V).
    moved = decode_bytes(shape, 2 if _DTYPE.value == "bfloat16" else 4, B, G, P, C)
    d = _timing.decode_step(med[f"ours_{modes[0]}"], med["ours_prefill"], C, moved, limits)
    report["ours_decode_step"] = {"mode": modes[0], "median_s": round(d["step_s"], 5),
                                  "least_bytes_gb": round(moved / 1e9, 4)}
    # Rates only where they are measured (not noise, a bandwidth timed).
    for key, digits in (("gb_per_s", 2), ("fraction_of_copy_bandwidth", 3)):
      if d[key] is not None:
        report["ours_decode_step"][key] = round(d[key], digits)
  _timing.emit(report, _OUT.value)


if __name__ == "__main__":
  app.run(main)
