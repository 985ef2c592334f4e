"""Rollout throughput: our jitted prefill + fan-out + decode loop vs `transformers.generate`.

  python benchmarks/rollout.py [--cores 1 --videos 8 --generations 4 --new_tokens 64
      --frames 2 --text 16 --runs 30 --burst 3 --out FILE.json --xla_flags=...]

Both run the same tiny random InternVL checkpoint (tests/hf_tiny.py) on the same prompts
(`videos` prompts, `frames` 56 px frames each, `text` text tokens either side), sampling
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
Prints one JSON object (and writes it to `--out`) with the provenance: date, CPU model,
commit, command, load.
"""

from __future__ import annotations

import json
import os
import pathlib
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
_FRAMES = flags.DEFINE_integer("frames", 2, "56 px frames per video (4 visual tokens each)")
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
  from hf_tiny import video_batch
  from jax.sharding import NamedSharding, PartitionSpec
  from vqathinker_jax import model
  from vqathinker_jax.model import sharding
  from vqathinker_jax.rl import rollout
  devices = jax.devices()[:cores] if jax.default_backend() == "cpu" else jax.devices()[:1]
  mesh = sharding.make_mesh({"data": len(devices)}, devices)
  m, _ = model.from_pretrained(path, mesh=mesh)
  ids, pix, _ = video_batch(seed=0, videos=batch["videos"], frames=batch["frames"], size=56,
                            text=batch["text"], motion=False)
  # Placed once, split over the batch (as transformers' tensors are made once).
  inputs = jax.device_put((ids, np.ones_like(ids), pix),
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
  from hf_tiny import video_batch
  from transformers import InternVLForConditionalGeneration
  torch.set_num_threads(cores)
  hf = InternVLForConditionalGeneration.from_pretrained(path).eval()
  G, C = batch["generations"], batch["new_tokens"]
  ids, pix, _ = video_batch(seed=0, videos=batch["videos"], frames=batch["frames"], size=56,
                            text=batch["text"], motion=False)
  ids_t = torch.tensor(np.repeat(ids, G, 0))
  pix_t = torch.tensor(np.repeat(pix, G, 0).reshape(-1, *pix.shape[2:]).transpose(0, 3, 1, 2)
                       .copy())
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
  cores = sorted(os.sched_getaffinity(0))[:_CORES.value]
  if len(cores) < _CORES.value:
    raise app.UsageError(f"--cores={_CORES.value}: this process may use {len(cores)}")
  B, G, C, n = _VIDEOS.value, _GENERATIONS.value, _NEW_TOKENS.value, len(cores)
  if B % n:
    raise app.UsageError(f"--videos={B} does not split over {n} devices")
  from hf_tiny import make_hf_checkpoint
  path = tempfile.mkdtemp(prefix="rollout_bench_")
  make_hf_checkpoint(pathlib.Path(path))  # one checkpoint for every contender
  batch = dict(videos=B, generations=G, new_tokens=C, frames=_FRAMES.value, text=_TEXT.value,
               top_k=_TOP_K.value)
  env = {"OMP_NUM_THREADS": str(n), "XLA_FLAGS": " ".join(filter(None, [
      os.environ.get("XLA_FLAGS", ""), _timing.xla_flags_value(),
      f"--xla_force_host_platform_device_count={n}"]))}
  kw = dict(path=path, cores=n, batch=batch)
  contenders = {"ours_sample": (ours, dict(kw, greedy=False)),
                "hf_sample": (transformers_generate, dict(kw, greedy=False)),
                "ours_greedy": (ours, dict(kw, greedy=True)),
                "hf_greedy": (transformers_generate, dict(kw, greedy=True))}
  r = _timing.isolated(contenders, _RUNS.value, cores=cores, env=env, seed=_SEED.value,
                       burst=_BURST.value)
  for name, shape in r["info"].items():
    assert shape == [B * G, C], (name, shape)
  tokens = B * G * C
  med = {name: statistics.median(ts) for name, ts in r["times_s"].items()}
  report = {
      **_timing.provenance(), "setup": "like for like: each contender in its own process, "
      f"pinned to the same {n} core(s): torch {n} thread(s), ours {n} host device(s)",
      "batch": dict(batch, prompt_tokens=2 * _TEXT.value + 4 * _FRAMES.value,
                    generated_tokens=tokens),
      "cores": r["cores"], "env": env, "runs": _RUNS.value, "burst": _BURST.value,
      "order_seed": _SEED.value, "load_average": r["load_average"],
      "predecessors": r["predecessors"],
  }
  for name in contenders:
    report[name] = {"tokens_per_s": round(tokens / med[name], 1),
                    **_timing.summary(r["times_s"][name])}
    if name.startswith("ours"):
      report[name]["compile_s"] = round(r["first_s"][name] - med[name], 3)
  for mode in ("sample", "greedy"):
    ratios = [h / o for h, o in zip(r["times_s"][f"hf_{mode}"], r["times_s"][f"ours_{mode}"])]
    report[f"speedup_{mode}"] = round(med[f"hf_{mode}"] / med[f"ours_{mode}"], 2)
    # The spread: the ratio of the i-th calls of each side (same round), quartiles.
    q1, _, q3 = (statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1
                 else ratios * 3)
    report[f"speedup_{mode}_quartiles"] = [round(q1, 2), round(q3, 2)]
  text = json.dumps(report, indent=2)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  app.run(main)
