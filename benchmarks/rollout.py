"""Rollout throughput: our jitted prefill + fan-out + decode loop vs `transformers.generate`.

  python benchmarks/rollout.py [--videos 8 --generations 4 --new_tokens 64 --frames 2
      --text 16 --runs 30 --burst 3 --devices 0 --torch_threads 0 --xla_flags=...]

Both run the same tiny random InternVL checkpoint (tests/hf_tiny.py) on the same prompts
(`videos` prompts, `frames` 56 px frames each, `text` text tokens either side), sampling
with temperature 1 and top-k 50 (docs/method.md §4), exactly `new_tokens` tokens per completion (no
stop ids). transformers gets each prompt repeated G times (as the reference rolls out);
ours prefills each prompt once and shares its cache among the G samples. Ours runs through
`rollout.cached_generate` (and, for comparison, `generate_jit`, which pays NNX's graph
traversal per call); greedy decoding is timed too.

Both sides get the whole machine: torch its intra-op threads (one per core by default),
ours the batch split over `devices` JAX devices on a `data` mesh (on CPU, one host device
per core: XLA runs one program on about one core, so the cores are used as devices, as on
an accelerator host; each shard samples its rows on its own). Ours on a single device is
timed too (`*_one_device`), against the same transformers runs. Runs are interleaved in
one process (the order rotated each round, `_timing.interleaved`);
rates are medians over `runs`; our compile time (first call minus the median) is reported
apart. ``--xla_flags`` is appended to XLA_FLAGS before JAX starts and echoed in the
output (none by default: `--xla_cpu_multi_thread_eigen=false`, and YNNPACK fusion
types other than the default, measured no faster on a 2-core CPU). Prints one JSON
object.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests")]  # run from a checkout, installed or not

import _timing  # noqa: E402  (benchmarks/, beside this file)

_VIDEOS = flags.DEFINE_integer("videos", 8, "prompts (videos) per batch")
_GENERATIONS = flags.DEFINE_integer("generations", 4, "completions per prompt (G)")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "tokens generated per completion")
_FRAMES = flags.DEFINE_integer("frames", 2, "56 px frames per video (4 visual tokens each)")
_TEXT = flags.DEFINE_integer("text", 16, "text tokens before and after the frames")
_TOP_K = flags.DEFINE_integer("top_k", 50, "top-k of both samplers")
_RUNS = flags.DEFINE_integer("runs", 30, "timed runs of each")
_BURST = flags.DEFINE_integer(
    "burst", 3, "runs of a contender in a row per round (all timed): rollouts come in a "
    "stream, and a call right after another program's runs ~25 % slower on a 2-vCPU VM")
_DEVICES = flags.DEFINE_integer(
    "devices", 0, "JAX devices the batch is split over (0: one per CPU core on CPU, else "
    "all of the default backend's); 1 times the single-device rollout alone")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "torch intra-op threads (0: torch's default); 1 keeps transformers "
    "from collapsing when other processes load the CPU")


def main(_):
  cores = _DEVICES.value or os.cpu_count()
  # Only the CPU platform reads this (it must be set before JAX starts).
  os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                             f"--xla_force_host_platform_device_count={cores}").strip()
  _timing.apply_xla_flags()
  import jax
  import torch
  from hf_tiny import make_hf_checkpoint, video_batch
  from jax.sharding import NamedSharding, PartitionSpec
  from vqathinker_jax import model
  from vqathinker_jax.model import sharding
  from vqathinker_jax.rl import rollout
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  devices = jax.devices()[:cores] if jax.default_backend() == "cpu" else jax.devices()
  if _DEVICES.value and len(devices) < _DEVICES.value:
    raise app.UsageError(f"--devices={_DEVICES.value}: only {len(devices)} available")

  B, G, C = _VIDEOS.value, _GENERATIONS.value, _NEW_TOKENS.value
  path = pathlib.Path(tempfile.mkdtemp(prefix="rollout_bench_"))
  hf = make_hf_checkpoint(path)
  ids, pix, _ = video_batch(seed=0, videos=B, frames=_FRAMES.value, size=56, text=_TEXT.value,
                            motion=False)
  if B % len(devices):
    raise app.UsageError(f"--videos={B} does not split over {len(devices)} devices")
  meshes = {"": sharding.make_mesh({"data": len(devices)}, devices)}
  if len(devices) > 1:
    meshes["_one_device"] = sharding.single_device_mesh(devices[0])
  mask = np.ones_like(ids)  # equal lengths: no padding convention to differ on
  runs = {}
  for suffix, mesh in meshes.items():
    ours, _ = model.from_pretrained(path, mesh=mesh)
    # Placed once, split over the batch (as transformers' tensors are made once).
    inputs = jax.device_put((ids, mask, pix), NamedSharding(mesh, PartitionSpec("data")))
    runs[suffix] = (ours, rollout.cached_generate(ours), mesh, inputs)
  ids_t = torch.tensor(np.repeat(ids, G, 0))
  pix_t = torch.tensor(np.repeat(pix, G, 0).reshape(-1, *pix.shape[2:]).transpose(0, 3, 1, 2)
                       .copy())

  def ours_fn(greedy, cached, suffix=""):
    ours, run, mesh, inputs = runs[suffix]

    def call(seed):
      kw = dict(rng=jax.random.key(seed), num_generations=G, max_new_tokens=C,
                temperature=1.0, top_k=_TOP_K.value, greedy=greedy, stop_ids=())
      with jax.set_mesh(mesh):
        out = run(*inputs, **kw) if cached else rollout.generate_jit(ours, *inputs, **kw)
        return jax.block_until_ready(out)["tokens_NC"]
    return call

  def hf_fn(greedy):
    def call(seed):
      torch.manual_seed(seed)
      sampling = {} if greedy else dict(temperature=1.0, top_k=_TOP_K.value, top_p=1.0)
      with torch.no_grad():
        out = hf.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
                          pixel_values=pix_t, do_sample=not greedy, max_new_tokens=C,
                          min_new_tokens=C, pad_token_id=0, eos_token_id=None, **sampling)
      return out[:, ids.shape[1]:]
    return call

  contenders = {"ours_sample": ours_fn(False, True), "hf_sample": hf_fn(False),
                "ours_sample_generate_jit": ours_fn(False, False),
                "ours_greedy": ours_fn(True, True), "hf_greedy": hf_fn(True)}
  if "_one_device" in runs:
    contenders["ours_sample_one_device"] = ours_fn(False, True, "_one_device")
    contenders["ours_greedy_one_device"] = ours_fn(True, True, "_one_device")
  first_s = {}
  for name, fn in contenders.items():  # compile, and check shapes before timing
    start = time.perf_counter()
    out = fn(0)
    first_s[name] = time.perf_counter() - start
    assert tuple(out.shape) == (B * G, C), (name, out.shape)
  _, times = _timing.interleaved(contenders, _RUNS.value, _BURST.value)

  tokens = B * G * C
  med = {name: statistics.median(ts) for name, ts in times.items()}
  report = {
      "batch": {"videos": B, "generations": G, "new_tokens": C, "prompt_tokens": ids.shape[1],
                "frames_per_video": _FRAMES.value, "generated_tokens": tokens},
      "sampling": {"temperature": 1.0, "top_k": _TOP_K.value},
      **_timing.environment(), "torch_threads": torch.get_num_threads(),
      "ours_devices": len(devices), "runs": _RUNS.value, "burst": _BURST.value,
  }
  for name in contenders:
    report[name] = {"tokens_per_s": round(tokens / med[name], 1), **_timing.summary(times[name])}
    # generate_jit reuses ours_sample's program: no compile time of its own.
    if name.startswith("ours") and "generate_jit" not in name:
      report[name]["compile_s"] = round(first_s[name] - med[name], 3)
  for mode in ("sample", "greedy"):
    for suffix in runs:
      report[f"speedup_{mode}{suffix}"] = round(med[f"hf_{mode}"] / med[f"ours_{mode}{suffix}"],
                                                2)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
