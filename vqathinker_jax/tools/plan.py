"""FLOPs and parameter counts of one GRPO step for a run config, from formulas (no compile).

    python -m vqathinker_jax.tools.plan --config configs/base.py [--config.a.b=v ...] \
        [--devices N] [--prompt_len P] [--json]

Memory is not estimated here: `tools/aot` compiles the real program with XLA:TPU and reads
its per-chip peak (this module's activation formulas ran ~50 % high against that compile at
real widths, so they were retired).

Parameters: the trainable ones (ViT, projectors, the LLM with its embedding and LM head as
stored, padded to `TextConfig.padded_vocab_size`) and the frozen SlowFast's. FLOPs per step,
all devices: rollout prefill + decode (and the perturbed rollout when `grpo.temporal`), the
old-policy and reference log-prob passes, and the update's forward + backward. Matmul FLOPs
are 2·m·n·k; attention counts every score `layers.attention` computes, masked ones
included: the packed pass scores only the blocks its `PrefixGroupMask` allows
(P² + G·C·(P + C) pairs per head), a rollout prefill P×P and each decode step every slot
of its cache.

Legend: B videos, G completions per video, C completion tokens, P prompt tokens,
L = P + G·C packed tokens, T frames, D/F LLM width/MLP width, H/K query/KV heads,
E head dim, V vocabulary as stored (padded), Cv/Fv/Hv ViT width/MLP width/heads,
Np ViT tokens per frame.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

from vqathinker_jax import factory
from vqathinker_jax.model import sharding
from vqathinker_jax.model.config import ModelConfig, TextConfig, VisionConfig
from vqathinker_jax.model.slowfast import SlowFastConfig

# Text tokens of the docs/method.md §2 training prompt outside the `<IMG_CONTEXT>` slots, measured with
# Qwen2.5's BPE (the InternVL3 tokenizer: qwen.tiktoken ranks and Qwen2's split regex) on
# `tokenizer.prompt_text(PromptConfig(layout="train"))`: 139 for the chat template, system
# message, question and format instruction, plus per frame `Frame{i}:` + `<img>` `</img>` +
# newline = 5 tokens + one per digit of i, plus 6 for the motion line (`Motion Feature:`,
# `<img>`, `</img>`, newline). E.g. T = 6 with motion: 181 text + 6·256 + 1 slots = 1718.
# (The `reference_eval` layout is one token shorter.)
PROMPT_TEXT_TOKENS = 139
MOTION_TEXT_TOKENS = 6


# ------------------------------------------------------------------- the settings ---

@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything the formulas read, taken from a run config by `setup_from_config`."""
  model: ModelConfig
  mesh: dict                  # {"data": d, "fsdp": f, "tensor": t}, resolved
  batch: int                  # B videos per step (global)
  frames: int                 # T
  size: int                   # frame side in pixels
  num_generations: int        # G
  completion: int             # C = max_completion_length
  prompt: int                 # P
  beta: float
  temporal: bool
  num_iterations: int = 1
  micro_batch: int = 0        # videos per gradient micro-batch (0: B)
  logprob_micro_batch: int = 0
  chunk: int = 256            # LM-head chunk

  @property
  def devices(self) -> int:
    return math.prod(self.mesh.values())

  @property
  def packed(self) -> int:
    return self.prompt + self.num_generations * self.completion

  @property
  def pairs(self) -> int:
    """(query, key) pairs per head a packed row scores: the prompt's causal P×P block and
    each completion token against the prompt and its own completion (never the other
    completions, `layers.PrefixGroupMask`)."""
    P, G, C = self.prompt, self.num_generations, self.completion
    return P * P + G * C * (P + C)


def prompt_tokens(frames: int, tokens_per_frame: int, motion: bool) -> int:
  """P of the docs/method.md §2 training prompt (see PROMPT_TEXT_TOKENS)."""
  text = PROMPT_TEXT_TOKENS + sum(5 + len(str(i + 1)) for i in range(frames))
  return text + frames * tokens_per_frame + (MOTION_TEXT_TOKENS + 1 if motion else 0)


model_config_from = factory.model_config  # kept: benchmarks and tests call it by this name


def resolve_mesh(mesh: dict, devices: int) -> dict:
  dims = {a: int(mesh.get(a, 1)) for a in sharding.MESH_AXES}
  known = math.prod(d for d in dims.values() if d != -1)
  for a, d in dims.items():
    if d == -1:
      dims[a] = devices // known
  if math.prod(dims.values()) != devices:
    raise ValueError(f"mesh {mesh} does not fit {devices} devices")
  return dims


def setup_from_config(c, devices: int, prompt_len: int | None = None) -> Setup:
  mc = model_config_from(c)
  g = c.grpo
  P = prompt_len or prompt_tokens(c.data.frames, mc.tokens_per_frame(c.data.size),
                                  mc.motion is not None)
  return Setup(model=mc, mesh=resolve_mesh(dict(c.mesh), devices), batch=c.train.batch_size,
               frames=c.data.frames, size=c.data.size, num_generations=g.num_generations,
               completion=g.max_completion_length, prompt=P, beta=g.beta, temporal=g.temporal,
               num_iterations=g.num_iterations, micro_batch=g.micro_batch_size,
               logprob_micro_batch=g.logprob_micro_batch_size, chunk=g.logprob_chunk)


# ------------------------------------------------------------------- parameters ---

def vit_params(v: VisionConfig, feature_layer: int = -1) -> int:
  C, F, p, g = v.hidden_size, v.intermediate_size, v.patch_size, v.grid
  blocks = feature_layer % (v.num_layers + 1)
  norm = C if v.norm_type == "rms_norm" else 2 * C
  attn = 4 * C * C + (3 * C if v.qkv_bias else 0) + C + (2 * C if v.qk_norm else 0)
  block = attn + 2 * norm + 2 * C + C * F + F + F * C + C  # + layer scales, fc1, fc2
  final = 2 * C if v.final_norm and blocks == v.num_layers else 0
  return p * p * 3 * C + C + C + (1 + g * g) * C + blocks * block + final


def projector_params(c_in: int, d: int) -> int:
  """`mlp1` / `motion_mlp`: LayerNorm(c_in) -> Linear(c_in, d) -> GELU -> Linear(d, d)."""
  return 2 * c_in + c_in * d + d + d * d + d


def llm_params(t: TextConfig) -> int:
  D, F, H, K, E = t.hidden_size, t.intermediate_size, t.num_heads, t.num_kv_heads, t.head_dim
  attn = D * H * E + H * E + 2 * (D * K * E + K * E) + H * E * D
  layer = attn + 3 * D * F + 2 * D
  V = t.padded_vocab_size  # the stored embedding and LM head
  return V * D * (1 if t.tie_word_embeddings else 2) + t.num_layers * layer + D


def slowfast_params(cfg: SlowFastConfig) -> int:
  """SlowFast's frozen weights, counted on the abstract module (its R50 layout is long)."""
  import jax
  from flax import nnx
  from vqathinker_jax.model import slowfast
  abstract = nnx.eval_shape(lambda: slowfast.SlowFast(cfg, dtype="float32", param_dtype="float32",
                                                      rngs=nnx.Rngs(0)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract)))


def param_count(mc: ModelConfig) -> dict:
  """Trainable (nnx.Param) and frozen (SlowFast) parameter counts."""
  trainable = (vit_params(mc.vision, mc.vision_feature_layer)
               + projector_params(4 * mc.vision.hidden_size, mc.text.hidden_size)
               + llm_params(mc.text))
  frozen = 0
  if mc.motion is not None:
    trainable += projector_params(mc.motion.feature_dim(), mc.text.hidden_size)
    frozen = slowfast_params(mc.motion)
  return dict(trainable=trainable, frozen=frozen)


# --------------------------------------------------------------------- FLOPs ---

def vit_flops_per_frame(mc: ModelConfig, size: int) -> int:
  """Forward FLOPs of one frame through the ViT blocks and `mlp1`."""
  v, D = mc.vision, mc.text.hidden_size
  C, F, p = v.hidden_size, v.intermediate_size, v.patch_size
  n = (size // p) ** 2 + 1
  blocks = mc.vision_feature_layer % (v.num_layers + 1)
  patch = 2 * (n - 1) * p * p * 3 * C
  block = 2 * n * (4 * C * C + 2 * C * F) + 4 * n * n * C
  tokens = mc.tokens_per_frame(size)
  return patch + blocks * block + 2 * tokens * (4 * C * D + D * D)


def llm_matmul_flops_per_token(t: TextConfig) -> int:
  """Forward FLOPs per token of the decoder layers' projections (not attention, not head)."""
  D, F, H, K, E = t.hidden_size, t.intermediate_size, t.num_heads, t.num_kv_heads, t.head_dim
  return 2 * t.num_layers * (D * (H + 2 * K) * E + H * E * D + 3 * D * F)


def attention_flops(t: TextConfig, queries: int, keys: int) -> int:
  """Scores and weighted values, every layer: 2·2·H·E per (query, key) pair."""
  return 4 * t.num_layers * t.num_heads * t.head_dim * queries * keys


def head_flops(t: TextConfig, tokens: int) -> int:
  """The LM head's matmul, over the stored (padded) vocabulary: what runs."""
  return 2 * t.hidden_size * t.padded_vocab_size * tokens


def logprob_pass_flops(s: Setup) -> int:
  """One packed forward over the batch: ViT + mlp1 on T frames, the decoder on L tokens with
  block-masked attention (`Setup.pairs`), the LM head on the G·C completion tokens."""
  t, L, B = s.model.text, s.packed, s.batch
  per_video = (s.frames * vit_flops_per_frame(s.model, s.size)
               + L * llm_matmul_flops_per_token(t) + attention_flops(t, s.pairs, 1)
               + head_flops(t, s.num_generations * s.completion))
  return B * per_video


def step_flops(s: Setup, slowfast_flops: int = 0) -> dict:
  """FLOPs per GRPO step, all devices. ``slowfast_flops``: per video (frozen, forward only)."""
  t, B, G, P, C = s.model.text, s.batch, s.num_generations, s.prompt, s.completion
  vit = s.frames * vit_flops_per_frame(s.model, s.size) + slowfast_flops

  def rollout(videos, rows):
    prefill = videos * (vit + P * llm_matmul_flops_per_token(t) + attention_flops(t, P, P)
                        + head_flops(t, 1))
    # Each step attends to the whole prompt and the whole (masked) completion cache.
    decode = rows * (C - 1) * (llm_matmul_flops_per_token(t) + attention_flops(t, 1, P + C)
                               + head_flops(t, 1))
    return prefill + decode

  fwd = logprob_pass_flops(s) + B * slowfast_flops
  out = dict(rollout=rollout(B, B * G),
             perturbed_rollout=rollout(B * G, B * G) if s.temporal else 0,
             # With one iteration the old policy is the policy: its pass is the update's
             # forward, op for op, and XLA's CSE computes it once.
             old_logprobs=fwd if s.num_iterations > 1 else 0,
             reference=fwd if s.beta else 0,
             # forward + backward (2x, SlowFast frozen) + the LM head's rematerialised forward
             update=s.num_iterations * (3 * fwd - 2 * B * slowfast_flops
                                        + B * head_flops(t, G * C)))
  out["total"] = sum(out.values())
  return out


# -------------------------------------------------------------------- the plan ---

def plan(s: Setup, slowfast_flops: int = 0) -> dict:
  """Parameter counts and step FLOPs; see the module docstring (memory: `tools/aot`)."""
  flops = step_flops(s, slowfast_flops)
  return dict(devices=s.devices, mesh=s.mesh, prompt_tokens=s.prompt, packed_tokens=s.packed,
              params=param_count(s.model), flops=flops,
              flops_per_device=flops["total"] / s.devices)


def format_plan(p: dict) -> str:
  lines = [f"devices {p['devices']}  mesh {p['mesh']}  prompt P={p['prompt_tokens']}  "
           f"packed L={p['packed_tokens']}",
           f"parameters: {p['params']['trainable']:,} trainable, {p['params']['frozen']:,} frozen",
           "FLOPs per step (all devices):"]
  lines += [f"  {k:<28}{v:>14.4g}" for k, v in p["flops"].items()]
  lines.append(f"  {'per device':<28}{p['flops_per_device']:>14.4g}")
  lines.append("memory per chip: python -m vqathinker_jax.tools.aot --config ... --topology ...")
  return "\n".join(lines)


def main(argv=None):
  from absl import app, flags
  from ml_collections import config_flags

  config = config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py).")
  devices = flags.DEFINE_integer("devices", None, "Devices (default: the mesh's product, "
                                 "else jax.device_count()).")
  prompt_len = flags.DEFINE_integer("prompt_len", None, "Prompt tokens P (default: the "
                                    "docs/method.md §2 template's, see PROMPT_TEXT_TOKENS).")
  as_json = flags.DEFINE_bool("json", False, "Print JSON.")
  flags.mark_flags_as_required(["config"])

  def run(_):
    c = config.value
    n = devices.value
    if n is None:
      sizes = [int(c.mesh[a]) for a in sharding.MESH_AXES]
      if -1 in sizes:
        import jax
        n = jax.device_count()
      else:
        n = math.prod(sizes)
    p = plan(setup_from_config(c, n, prompt_len.value))
    print(json.dumps(p, indent=2) if as_json.value else format_plan(p))

  app.run(run, argv=argv or sys.argv)


if __name__ == "__main__":
  main()
