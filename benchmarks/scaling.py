"""Scaling of the rollout and the GRPO step on the default JAX device (issue 7).

  python benchmarks/scaling.py [--config configs/demo.py --config.a.b=v ...]
      [--rollout_generations 1,2,4,8 --rollout_frames 16 --frames 6,12,24
       --generations 2,4,8 --text 16 --runs 5 --sections rollout,step,mfu --xla_flags=...]

The model is the run config's `model.arch` (default: the demo's tiny random model) on a
one-device mesh; B (`train.batch_size`), C (`grpo.max_completion_length`, 24 for the demo),
the default G (`grpo.num_generations`) and T (`data.frames`), β and the frame side
(`data.size`, 56 px) come from the config. Prompts are `text` random text tokens around
T·tokens_per_frame `<IMG_CONTEXT>` slots: at 448 px the real prompt is ~90% visual, and at
56 px a frame is only 4 tokens, so the text is kept short to keep that balance. Sampling
uses the config's temperature and top-k, with no stop ids, so every row decodes exactly C
tokens and runs compare like with like. Three sections, each timed by
`_timing.interleaved` (runs alternate between contenders; medians quoted):

rollout  `rollout.cached_generate` with the prompt prefilled once per video and its KV cache
         fanned out to G rows (`num_generations=G`), against the prompt repeated G times
         (B·G prompts, `num_generations=1`: what TRL does), for each G: time, generated
         tokens/s and repeated / shared. At G = 1 both are the same compiled program: their
         ratio shows the timing noise.
step     the whole jitted GRPO step (`train.steps.make_grpo_step`, `temporal=True`: the G
         perturbed rollouts too) vs frames at the default G and vs G at the default T:
         lower + compile time, median step time, XLA's `memory_analysis()` of the very
         executable timed and, where the backend reports it (GPU; None on CPU), the
         allocator's running peak after each configuration's first call (first calls go
         in ascending order of XLA's estimate; the earlier ones' states stay live and
         count: see `bytes_in_use_before`). The reward is a cheap
         on-device stand-in (`_reward`: token statistics of the rollout and of the
         perturbed rollout, through `rewards.group_advantages`): the real one parses
         bytes, which this is not about.
mfu      the policy update alone (`train.steps.make_update_step`: reference pass + forward +
         backward + AdamW) at the default B, G, T: XLA's `cost_analysis()` FLOPs / median
         time / the matmul peak measured in this run (`_timing.matmul_peak_flops`), next to
         the planner's count (`tools/plan.step_flops`). The LM head runs in one chunk here
         (logprob_chunk = G·C): XLA counts a loop body once, whatever its trip count.
         The whole step's planner FLOPs over its median time are given too (its decode
         loops make XLA's own count meaningless).

Prints one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT)]  # run from a checkout, installed or not

import _timing  # noqa: E402  (benchmarks/, beside this file)

_CONFIG = config_flags.DEFINE_config_file("config", str(_ROOT / "configs/demo.py"),
                                          "run config: model, B, C, default G and T")
_SECTIONS = flags.DEFINE_list("sections", ["rollout", "step", "mfu"], "what to measure")
_ROLLOUT_G = flags.DEFINE_list("rollout_generations", ["1", "2", "4", "8"], "rollout: G values")
_ROLLOUT_FRAMES = flags.DEFINE_integer("rollout_frames", 16, "rollout: frames per video")
_FRAMES = flags.DEFINE_list("frames", ["6", "12", "24"], "step: frames per video (at default G)")
_GENERATIONS = flags.DEFINE_list("generations", ["2", "4", "8"], "step: G values (at default T)")
_TEXT = flags.DEFINE_integer("text", 16, "text tokens per prompt, half before the frames")
_RUNS = flags.DEFINE_integer("runs", 5, "timed runs of each contender")


def _ints(values):
  return [int(v) for v in values]


def _memory_stats(device) -> dict | None:
  """The allocator's counters (GPU/TPU); None where the backend keeps none (CPU)."""
  stats = device.memory_stats()
  if not stats:
    return None
  return {k: stats[k] for k in ("bytes_in_use", "peak_bytes_in_use") if k in stats}


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  return cost if isinstance(cost, dict) else cost[0]  # a list of one before jax 0.4.3x


def _xla_memory(compiled) -> dict:
  """XLA's buffer assignment: peak = arguments + outputs not aliasing a donated input + temps."""
  ma = compiled.memory_analysis()
  out = dict(argument_bytes=ma.argument_size_in_bytes, output_bytes=ma.output_size_in_bytes,
             alias_bytes=ma.alias_size_in_bytes, temp_bytes=ma.temp_size_in_bytes,
             generated_code_bytes=ma.generated_code_size_in_bytes)
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                       + out["temp_bytes"])
  return out


class Bench:
  """The model config, mesh and prompt layout shared by the sections."""

  def __init__(self, c):
    import jax
    from vqathinker_jax.model import sharding
    from vqathinker_jax.tools import plan
    self.c = c
    self.mc = plan.model_config_from(c)
    self.device = jax.devices()[0]
    self.mesh = sharding.single_device_mesh(self.device)
    self.B, self.C = c.train.batch_size, c.grpo.max_completion_length
    self.G, self.T, self.S = c.grpo.num_generations, c.data.frames, c.data.size
    self._model = None

  def model(self):
    """A fresh copy of one random model: the steps donate (spend) theirs, and `model.init`
    compiles anew on every call (seconds each)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from vqathinker_jax import model
    if self._model is None:
      self._model = nnx.split(model.init(self.mc, seed=0, mesh=self.mesh))
    graphdef, state = self._model
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))

  def prompt(self, B: int, T: int, seed: int = 0):
    """ids [B, P] (text | T·tokens_per_frame slots | text) and normalised-scale frames
    [B, T, S, S, 3]."""
    rng = np.random.default_rng(seed)
    visual = T * self.mc.tokens_per_frame(self.S)
    text = rng.integers(6, min(self.mc.text.vocab_size, 500), (B, _TEXT.value))
    # Random text ids that happen to equal <IMG_CONTEXT> would add slots.
    text[text == self.mc.image_token_id] += 1
    half = _TEXT.value // 2
    ids_BP = np.concatenate([text[:, :half], np.full((B, visual), self.mc.image_token_id),
                             text[:, half:]], axis=1).astype(np.int32)
    pix = rng.standard_normal((B, T, self.S, self.S, 3)).astype(np.float32)
    return ids_BP, pix

  def grpo_config(self, G: int, **kw):
    from vqathinker_jax.rl import grpo
    g = self.c.grpo
    return grpo.GRPOConfig(num_generations=G, max_completion_length=self.C, beta=g.beta,
                           temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                           stop_ids=(), temporal=True,
                           **{"logprob_chunk": g.logprob_chunk, **kw})

  def setup(self, G: int, T: int, **kw):
    """The planner's view of a step (tools/plan.Setup) at G, T."""
    from vqathinker_jax.tools import plan
    cfg = self.grpo_config(G, **kw)
    P = _TEXT.value + T * self.mc.tokens_per_frame(self.S)
    return plan.Setup(model=self.mc, mesh={"data": 1, "fsdp": 1, "tensor": 1}, batch=self.B,
                      frames=T, size=self.S, num_generations=G, completion=self.C, prompt=P,
                      beta=cfg.beta, temporal=cfg.temporal, chunk=cfg.logprob_chunk)


# ----------------------------------------------------------------------- rollout ---

def rollout_section(b: Bench) -> dict:
  import jax
  from vqathinker_jax.rl import rollout
  run = rollout.cached_generate(b.model())
  B, C, T = b.B, b.C, _ROLLOUT_FRAMES.value
  ids_BP, pix_BTHWC = b.prompt(B, T)
  mask_BP = np.ones_like(ids_BP)  # equal lengths: no padding
  kw = dict(max_new_tokens=C, temperature=b.c.grpo.temperature, top_k=b.c.grpo.top_k,
            top_p=b.c.grpo.top_p, stop_ids=())

  def contender(G, shared):
    if shared:
      args, n = (ids_BP, mask_BP, pix_BTHWC), G
    else:  # what TRL does: the prompt (and its frames) repeated G times
      args, n = tuple(np.repeat(x, G, axis=0) for x in (ids_BP, mask_BP, pix_BTHWC)), 1
    def call(seed):
      out = run(*args, rng=jax.random.key(seed), num_generations=n, **kw)
      return jax.block_until_ready(out)["tokens_NC"]
    return call

  gs = _ints(_ROLLOUT_G.value)
  first_s, times = {}, {}
  for G in gs:
    # Interleaved in pairs: on CPU a run right after a bigger program pays its cold caches
    # (~20% of a tiny model's rollout), so each contender follows its own counterpart.
    f, t = _timing.interleaved({f"{kind}_G{G}": contender(G, kind == "shared")
                                for kind in ("shared", "repeated")}, _RUNS.value)
    first_s.update(f)
    times.update(t)
  report = {"videos": B, "frames_per_video": T, "prompt_tokens": ids_BP.shape[1],
            "visual_tokens": T * b.mc.tokens_per_frame(b.S), "new_tokens": C, "by_G": {}}
  for G in gs:
    row, tokens = {}, B * G * C
    for kind in ("shared", "repeated"):
      name = f"{kind}_G{G}"
      med = statistics.median(times[name])
      row[kind] = {"tokens_per_s": round(tokens / med, 1),
                   "compile_s": round(first_s[name] - med, 3), **_timing.summary(times[name])}
    row["repeated_over_shared"] = round(row["repeated"]["median_s"] / row["shared"]["median_s"], 3)
    report["by_G"][str(G)] = row
  return report


# -------------------------------------------------------------------------- step ---

def _reward(G: int):
  """A cheap on-device stand-in for docs/method.md §3's rewards: each completion's share of even token
  ids, minus the mean share of its video's G perturbed rollouts (a stand-in for the temporal
  bonus), group-normalised. It must read the perturbed tokens: a reward that ignores them
  lets XLA drop the whole perturbed rollout as dead code."""
  import jax.numpy as jnp
  from vqathinker_jax.rl import rewards

  def even_share(tokens_NC, mask_NC):
    m = mask_NC.astype(jnp.float32)
    return ((tokens_NC % 2 == 0) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

  def reward_fn(tokens_NC, mask_NC, labels_B, perturbed):
    total = even_share(tokens_NC, mask_NC)
    pert_BG = even_share(*perturbed).reshape(-1, G)
    total = total - jnp.repeat(pert_BG.mean(1), G)
    return dict(total=total, advantage=rewards.group_advantages(total, G, 1e-4))
  return reward_fn


def _compiled_step(b: Bench, G: int, T: int):
  """(compiled whole step, state, batch, lower + compile seconds) at G, T."""
  import jax
  import jax.numpy as jnp
  from vqathinker_jax.train import state as train_state, steps
  cfg = b.grpo_config(G)
  tx = train_state.make_optimizer(1e-4)
  graphdef, state = train_state.init_state(b.model(), tx, reference=bool(cfg.beta))
  ids_BP, pix = b.prompt(b.B, T)
  batch = dict(prompt_ids=jnp.asarray(ids_BP), prompt_mask=jnp.ones(ids_BP.shape, jnp.int32),
               pixel_values=jnp.asarray(pix), labels=jnp.full((b.B,), 3.0, jnp.float32),
               # one perturbation per copy, as the pipeline draws them; no blanked frames
               perturb_idx=jnp.asarray(np.random.default_rng(1).permuted(
                   np.broadcast_to(np.arange(T), (b.B, G, T)), axis=-1).astype(np.int32)),
               blank=jnp.zeros((b.B, G, T), bool))
  step = steps.make_grpo_step(graphdef, state, tx, cfg, _reward(G))
  start = time.perf_counter()
  compiled = step.lower(state, batch, jax.random.key(0)).compile()
  return compiled, state, batch, time.perf_counter() - start


def step_section(b: Bench) -> dict:
  """Whole-step time and memory, vs T at the default G and vs G at the default T."""
  import jax
  configs = sorted({(b.G, T) for T in _ints(_FRAMES.value)}
                   | {(G, b.T) for G in _ints(_GENERATIONS.value)})
  built = {gt: _compiled_step(b, *gt) for gt in configs}
  # First calls (the warm-up in `interleaved`) in ascending order of XLA's estimate, so that
  # the device's running peak, read after each, is that configuration's (on GPU).
  order = sorted(configs, key=lambda gt: _xla_memory(built[gt][0])["peak_bytes"])
  states = {gt: built[gt][1] for gt in configs}
  device_memory = {}

  def contender(gt):
    compiled, _, batch, _ = built[gt]
    def call(seed):
      before = _memory_stats(b.device) if seed == 0 else None
      states[gt], metrics = compiled(states[gt], batch, jax.random.key(seed))  # donates
      jax.block_until_ready((states[gt], metrics))
      if seed == 0:
        device_memory[gt] = before and {"bytes_in_use_before": before["bytes_in_use"],
                                        **_memory_stats(b.device)}
    return call

  with jax.set_mesh(b.mesh):
    first_s, times = _timing.interleaved({gt: contender(gt) for gt in order}, _RUNS.value)
  rows = {}
  for (G, T) in configs:
    s = b.setup(G, T)
    rows[(G, T)] = {
        "G": G, "frames": T, "prompt_tokens": s.prompt, "packed_tokens": s.packed,
        "generated_tokens": 2 * b.B * G * b.C,  # the rollout and the perturbed rollout
        "compile_s": round(built[(G, T)][3], 3),
        "first_call_s": round(first_s[(G, T)], 4), **_timing.summary(times[(G, T)]),
        "xla_memory": _xla_memory(built[(G, T)][0]),
        "device_memory": device_memory[(G, T)]}
  return {"videos": b.B, "new_tokens": b.C, "temporal": True,
          "by_frames": {str(T): rows[(b.G, T)] for T in _ints(_FRAMES.value)},
          "by_generations": {str(G): rows[(G, b.T)] for G in _ints(_GENERATIONS.value)}}, rows


# --------------------------------------------------------------------------- mfu ---

def mfu_section(b: Bench, peak_flops: float, step_rows: dict | None) -> dict:
  import jax
  import jax.numpy as jnp
  from vqathinker_jax.tools import plan
  from vqathinker_jax.train import state as train_state, steps
  B, G, T, C = b.B, b.G, b.T, b.C
  cfg = b.grpo_config(G, logprob_chunk=G * C)  # one LM-head chunk: see the module docstring
  tx = train_state.make_optimizer(1e-4)
  graphdef, state = train_state.init_state(b.model(), tx, reference=bool(cfg.beta))
  ids_BP, pix = b.prompt(B, T)
  rng = np.random.default_rng(2)
  batch = dict(prompt_ids=jnp.asarray(ids_BP), prompt_mask=jnp.ones(ids_BP.shape, jnp.int32),
               pixel_values=jnp.asarray(pix),
               completions=jnp.asarray(rng.integers(6, 500, (B, G, C)).astype(np.int32)),
               completion_mask=jnp.ones((B, G, C), jnp.int32),
               advantages=jnp.asarray(rng.standard_normal((B, G)).astype(np.float32)))
  start = time.perf_counter()
  compiled = steps.make_update_step(graphdef, state, tx, cfg).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  box = [state]

  def call(seed):
    box[0], metrics = compiled(box[0], batch)  # donates the state
    jax.block_until_ready((box[0], metrics))

  with jax.set_mesh(b.mesh):
    _, times = _timing.interleaved({"update": call}, _RUNS.value)
  med = statistics.median(times["update"])
  xla_flops = _cost(compiled)["flops"]
  f = plan.step_flops(b.setup(G, T, logprob_chunk=G * C))
  planner_update = f["old_logprobs"] + f["reference"] + f["update"]
  report = {
      "G": G, "frames": T, "videos": B, "compile_s": round(compile_s, 3),
      **_timing.summary(times["update"]),
      "xla_flops": xla_flops, "planner_flops": planner_update,
      "planner_over_xla": round(planner_update / xla_flops, 3),
      "achieved_flops_per_s": round(xla_flops / med),
      "mfu": round(xla_flops / med / peak_flops, 4),
      "xla_memory": _xla_memory(compiled)}
  if step_rows and (G, T) in step_rows:  # the whole step, by the planner's count
    whole = step_rows[(G, T)]["median_s"]
    report["whole_step"] = {"median_s": whole, "planner_flops": f["total"],
                            "planner_flops_by_phase": {k: v for k, v in f.items() if k != "total"},
                            "planner_mfu": round(f["total"] / whole / peak_flops, 4)}
  return report


def main(_):
  _timing.apply_xla_flags()
  from vqathinker_jax.model.config import DTYPES
  start = time.perf_counter()
  b = Bench(_CONFIG.value)
  sections = set(_SECTIONS.value)
  report = {**_timing.environment(), "runs": _RUNS.value,
            "model": {"vision": dataclasses.asdict(b.mc.vision), "text": dataclasses.asdict(b.mc.text),
                      "dtype": b.mc.dtype},
            "frame_size": b.S, "tokens_per_frame": b.mc.tokens_per_frame(b.S),
            "text_tokens": _TEXT.value}
  # The step first: on GPU the device's running peak is then not the other sections'.
  step_rows = None
  if "step" in sections:
    report["step"], step_rows = step_section(b)
  if "rollout" in sections:
    report["rollout"] = rollout_section(b)
  if "mfu" in sections:
    peak = _timing.matmul_peak_flops(dtype=DTYPES[b.mc.dtype])
    report["matmul_peak_flops_per_s"] = round(peak)
    report["mfu"] = mfu_section(b, peak, step_rows)
  report["wall_s"] = round(time.perf_counter() - start, 1)
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
