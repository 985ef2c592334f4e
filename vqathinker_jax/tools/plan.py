"""Per-device memory and FLOPs of one GRPO step for a run config, from formulas (no compile).

    python -m vqathinker_jax.tools.plan --config configs/base.py [--config.a.b=v ...] \
        [--devices N] [--prompt_len P] [--json]

Memory per device (bytes): the state the step keeps (parameters, AdamW moments, the
reference copy, frozen weights) and the batch; then the transient peak: the larger of the
rollout (KV caches) and the update pass (gradients, the kernels gathered over `fsdp`, the
activations saved for the backward pass and, on top of them, the larger of an LM-head chunk's
backward and a reference-model layer; see `update_activation_bytes`). FLOPs per step, all
devices: rollout prefill + decode (and the perturbed rollout when `grpo.temporal`), the
old-policy and reference log-prob passes, and the update's forward + backward. Matmul FLOPs
are 2·m·n·k; attention counts every score `layers.attention` computes, masked ones
included: the packed pass scores only the blocks its `PrefixGroupMask` allows
(P² + G·C·(P + C) pairs per head), a rollout prefill P×P and each decode step every slot
of its cache.

Legend: B videos, G completions per video, C completion tokens, P prompt tokens,
L = P + G·C packed tokens, T frames, D/F LLM width/MLP width, H/K query/KV heads,
E head dim, V vocabulary, Cv/Fv/Hv ViT width/MLP width/heads, Np ViT tokens per frame.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types

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

GIB = 1 << 30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


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
  return t.vocab_size * D * (1 if t.tie_word_embeddings else 2) + t.num_layers * layer + D


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


def sharded_param_bytes(mc: ModelConfig, mesh: dict) -> dict:
  """Bytes of one device's shard of the trainable parameters and of the frozen ones, as
  `sharding.DEFAULT_RULES` place them (from the abstract model: shapes and axis names), and
  of the matmul kernels the update keeps gathered over `fsdp` (still split over `tensor`):
  XLA gathers each once and holds it from the forward pass to the backward pass, where the
  gradient of the kernel's input reads it again. That is every Dense kernel of the decoder
  layers, ViT blocks, projectors and the LM head (its chunks' rematerialised forward reads
  the same gather), except the motion projector's first layer (its input, frozen SlowFast
  features, needs no gradient; nor do the pixels of the patch embedding)."""
  import jax
  from flax import nnx
  from vqathinker_jax import model as model_lib
  from vqathinker_jax.model.slowfast import FrozenParam
  abstract = nnx.eval_shape(lambda: model_lib.InternVL(mc, nnx.Rngs(0)))
  fake_mesh = types.SimpleNamespace(shape=dict(mesh), axis_names=tuple(mesh))
  out = dict(trainable=0, frozen=0, trainable_full=0, kernels_gathered=0)
  for kind, cls in (("trainable", nnx.Param), ("frozen", FrozenParam)):
    leaves = jax.tree_util.tree_leaves_with_path(
        nnx.state(abstract, cls), is_leaf=lambda x: isinstance(x, nnx.Variable))
    for path, var in leaves:
      axes = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
      spec = sharding.logical_to_spec(axes, var.shape, fake_mesh)
      nbytes = math.prod(var.shape) * BYTES[mc.param_dtype]
      split = math.prod(mesh[a] for a in spec if a is not None)
      out[kind] += nbytes // split
      if kind != "trainable":
        continue
      out["trainable_full"] += nbytes
      names = [str(getattr(k, "key", k)) for k in path]
      if (names[-1] == "kernel" and "fsdp" in spec and mesh["fsdp"] > 1
          and names[-3:-1] != ["motion_mlp", "fc1"]):
        out["kernels_gathered"] += nbytes // (mesh["tensor"] if "tensor" in spec else 1)
  return out


# -------------------------------------------------------------------- KV cache ---

def kv_cache_bytes(sequences: int, length: int, t: TextConfig, dtype_bytes: int) -> int:
  """K and V of every layer: sequences × length × layers × kv_heads × head_dim × 2."""
  return sequences * length * t.num_layers * t.num_kv_heads * t.head_dim * 2 * dtype_bytes


def rollout_kv_bytes(s: Setup) -> dict:
  """The rollout keeps one prompt cache per video and a completion cache per row
  (B·P + B·G·C slots); the perturbed rollout (grpo.temporal) has B·G rows with their own
  prompts (B·G·(P + C)). Global bytes; the batch is split over fsdp × data."""
  t, b = s.model.text, BYTES[s.model.dtype]
  B, G, P, C = s.batch, s.num_generations, s.prompt, s.completion
  main = kv_cache_bytes(B, P, t, b) + kv_cache_bytes(B * G, C, t, b)
  pert = kv_cache_bytes(B * G, P + C, t, b) if s.temporal else 0
  return dict(rollout=main, perturbed=pert, peak=max(main, pert))


# --------------------------------------------------------------------- FLOPs ---

def vit_tokens(s: Setup) -> int:
  p = s.model.vision.patch_size
  return (s.size // p) ** 2 + 1


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
  return 2 * t.hidden_size * t.vocab_size * tokens


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


# ------------------------------------------------------------------ activations ---

def batch_shards(s: Setup, videos: int) -> int:
  """Devices a batch of ``videos`` is split over (`sharding.constrain_batch`)."""
  n = s.mesh["fsdp"] * s.mesh["data"]
  return n if videos % n == 0 else 1


def _split(n: int, tp: int) -> float:
  return n / tp if n % tp == 0 else n


def update_activation_bytes(s: Setup) -> dict:
  """Bytes one device holds in the update for its share of a gradient micro-batch: what the
  backward pass reads (llm, vit, head) and the working sets that land on top of all of it
  at the update's peak (head_backward, reference_layer: `plan` takes the larger). Counted
  from the buffers XLA keeps live at the peak of the compiled step (CPU dumps of the tiny
  configs in tests/tools/plan_test.py, each buffer traced to its source line). Token-wise tensors
  are in the compute dtype, except what the code computes in float32 (norm statistics,
  softmax).

  llm, per decoder layer and token: the two RMSNorms' normalised (f32) and scaled outputs
  [4·D], the two residual sums [2·D], q and the attention output [2·H·E] (the completion rows
  of q twice: the dots against the prompt keys and against their own keys each want their
  layout), k and v [2·K·E], gate, up, sigmoid(gate), silu(gate) and the product [5·F]; per
  layer the softmax's exponentials and probabilities, float32, for every scored pair
  (`Setup.pairs`); once per token the token embeddings, the gathered visual tokens, their
  merge and the final norm's output [4·D]. (No mask is kept: its comparisons fuse into the
  selects.)
  vit, per block and token: the two LayerNorms' centred and normalised inputs (f32) and
  outputs [6·Cv], the two layer-scaled branches (the layer scales' gradients read them),
  the mid residual and the block's input [4·Cv], head-major q, k, v and the attention
  output [4·Cv], fc1 and three GELU intermediates [4·Fv]; per block the softmax pair
  [Hv, Np, Np] float32; per frame the patchified pixels [(Np - 1)·p²·3]; per visual token
  the projector's LayerNorm [3·4Cv] and GELU [2·D].
  head: the LM head's input padded to whole chunks [G·C rounded up, D] and the gradient of
  the final hidden states [L, D] (XLA allocates it, zeroed, ahead of the backward pass).
  head_backward, one LM-head chunk of the backward pass: its rematerialised logits and
  log-softmax and their gradients, [chunk, V] float32 each.
  reference_layer, one decoder layer of the reference model's forward for the videos of a
  log-prob micro-batch: its softmax pair, its inputs (at the first layer the token
  embeddings and visual tokens, which the merge's select fuses into its consumers), q, k
  and v, and its gathered kernels."""
  mc, t, v = s.model, s.model.text, s.model.vision
  b, pb = BYTES[mc.dtype], BYTES[mc.param_dtype]
  tp = s.mesh["tensor"]
  mb = s.micro_batch or s.batch
  videos = mb / batch_shards(s, mb)
  L, GC = s.packed, s.num_generations * s.completion
  D, F, H, K, E = t.hidden_size, t.intermediate_size, t.num_heads, t.num_kv_heads, t.head_dim
  Hq, Kq, Fq = _split(H, tp), _split(K, tp), _split(F, tp)  # this device's heads, MLP width
  norm = lambda stats: 4 * stats + b  # f32 statistics + the output in the compute dtype
  tok = 2 * norm(1) * D + 2 * b * D + b * (2 * Hq * E + 2 * Kq * E + 5 * Fq)
  softmax = 2 * 4 * Hq * s.pairs
  llm = t.num_layers * (L * tok + b * GC * Hq * E + softmax) + L * 4 * b * D
  Np, p = vit_tokens(s), v.patch_size
  Cv, Fv, Hv = v.hidden_size, v.intermediate_size, v.num_heads
  Cq = Cv * _split(Hv, tp) / Hv  # this device's heads' share of the width
  vit_tok = 2 * norm(2) * Cv + 4 * b * Cv + b * (4 * Cq + 4 * _split(Fv, tp))
  blocks = mc.vision_feature_layer % (v.num_layers + 1)
  tokens = mc.tokens_per_frame(s.size)
  vit = s.frames * (blocks * (Np * vit_tok + 2 * 4 * _split(Hv, tp) * Np * Np)
                    + b * (Np - 1) * p * p * 3
                    + tokens * (norm(2) * _split(4 * Cv, tp) + 2 * b * _split(D, tp)))
  chunk = min(s.chunk, GC)
  head = b * -(-GC // chunk) * chunk * D + b * L * D
  head_backward = 4 * 4 * chunk * _split(t.vocab_size, tp) * videos
  lmb = s.logprob_micro_batch or s.batch
  kernels = pb * D * (2 * Hq * E + 2 * Kq * E + 3 * Fq) if s.mesh["fsdp"] > 1 else 0
  ref_video = softmax + b * L * (2 * D + (Hq + 2 * Kq) * E)
  ref = lmb / batch_shards(s, lmb) * ref_video + kernels if s.beta else 0
  return dict(llm=int(videos * llm), vit=int(videos * vit), head=int(videos * head),
              head_backward=int(head_backward), reference_layer=int(ref))


def rollout_activation_bytes(s: Setup) -> int:
  """The rollout's largest transient besides the caches: one prefill layer's attention
  scores [H, P, P] in float32 per video, and the decode logits [N, V] float32."""
  t = s.model.text
  tp = s.mesh["tensor"]
  videos = s.batch / batch_shards(s, s.batch)
  rows = s.batch * s.num_generations / batch_shards(s, s.batch * s.num_generations)
  prefill = videos * (2 * 4 * _split(t.num_heads, tp) * s.prompt ** 2)
  return int(prefill + 3 * 4 * rows * _split(t.vocab_size, tp))


# -------------------------------------------------------------------- the plan ---

def input_bytes(s: Setup) -> int:
  """The step's batch on one device: frames (float32), prompt ids/mask, labels, the
  temporal reward's permutations."""
  B = s.batch
  per_video = (s.frames * s.size * s.size * 3 * 4 + 2 * 4 * s.prompt + 4
               + (s.num_generations * s.frames * 5 if s.temporal else 0))
  return int(per_video * B / batch_shards(s, B))


def plan(s: Setup, slowfast_flops: int = 0) -> dict:
  """Per-device memory (bytes) and step FLOPs; see the module docstring."""
  mc = s.model
  pb = sharded_param_bytes(mc, s.mesh)
  shards = batch_shards(s, s.batch)
  params = pb["trainable"]
  state = dict(params=params,
               optimizer=2 * params + 4,  # AdamW mu and nu (the params' dtype), its count
               counters=8,  # TrainState.step, .skipped
               reference=params if s.beta else 0,
               frozen=pb["frozen"])
  kv = rollout_kv_bytes(s)
  kv_dev = max(kv["rollout"] // shards,
               kv["perturbed"] // batch_shards(s, s.batch * s.num_generations))
  act = update_activation_bytes(s)
  n_micro = s.batch // (s.micro_batch or s.batch)
  # The reference pass reads only the batch and only the loss reads its log-probs, so XLA
  # may schedule it anywhere before the loss: on CPU it runs in lockstep with the policy's
  # forward or after it, its layer's working set on top of every saved activation. A
  # micro-batch or iteration loop of more than one trip makes it finish first (its log-probs
  # are the loop's input); XLA inlines loops of one trip.
  overlap = n_micro == 1 and s.num_iterations == 1
  update = dict(gradients=params * (2 if n_micro > 1 else 1),  # accumulator + micro-batch's
                gathered_params=pb["kernels_gathered"],
                activations=act["llm"] + act["vit"] + act["head"],
                working_set=max(act["head_backward"],
                                act["reference_layer"] if overlap else 0))
  rollout = dict(kv_cache=kv_dev, activations=rollout_activation_bytes(s))
  transient = max(sum(update.values()), sum(rollout.values()))
  persistent = sum(state.values())
  flops = step_flops(s, slowfast_flops)
  counts = param_count(mc)
  return dict(
      devices=s.devices, mesh=s.mesh, prompt_tokens=s.prompt, packed_tokens=s.packed,
      params=counts, state=state, inputs=input_bytes(s), update=update,
      update_activations=act, rollout=rollout, kv_cache_global=kv,
      persistent=persistent, transient=transient,
      total=persistent + input_bytes(s) + transient,
      flops=flops, flops_per_device=flops["total"] / s.devices)


def _fmt_bytes(n: float) -> str:
  for unit, scale in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{int(n)} B"


def format_plan(p: dict) -> str:
  lines = [f"devices {p['devices']}  mesh {p['mesh']}  prompt P={p['prompt_tokens']}  "
           f"packed L={p['packed_tokens']}",
           f"parameters: {p['params']['trainable']:,} trainable, {p['params']['frozen']:,} frozen",
           "per device:"]
  rows = [(f"state/{k}", v) for k, v in p["state"].items()] + [("inputs", p["inputs"])]
  rows += [(f"update/{k}", v) for k, v in p["update"].items()]
  rows += [(f"  activations/{k}", v) for k, v in p["update_activations"].items()]
  rows += [(f"rollout/{k}", v) for k, v in p["rollout"].items()]
  rows += [("persistent (state)", p["persistent"]), ("transient peak", p["transient"]),
           ("total", p["total"])]
  lines += [f"  {k:<28}{_fmt_bytes(v):>14}" for k, v in rows]
  lines.append("FLOPs per step (all devices):")
  lines += [f"  {k:<28}{v:>14.4g}" for k, v in p["flops"].items()]
  lines.append(f"  {'per device':<28}{p['flops_per_device']:>14.4g}")
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
