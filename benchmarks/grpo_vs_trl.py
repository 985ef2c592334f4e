"""GRPO step time: our jitted `grpo.train_step` vs TRL's `GRPOTrainer`, same work, one run.

  python benchmarks/grpo_vs_trl.py [--videos 4 --generations 4 --new_tokens 32 --frames 6
      --beta 0.04 --steps 20 --warmup 3 --torch_threads 1 --nosplit --xla_flags=...]

Both sides train the same tiny random InternVL checkpoint (tests/hf_tiny.py: ViT, pixel
shuffle + projector, Qwen2 decoder; float32) on the same batch: `videos` prompts, each with
`frames` random 56 px frames (given to TRL as that many images, so its VLM path runs: ViT +
projector + LM on both sides) and a short question, rendered by one chat template and
transformers' InternVL processor (PIL image processor, one tile per frame); our side gets
exactly the token ids and normalised pixels that processor makes (equal prompt lengths, no
padding). Per step, each side does:

  rollout   G = `generations` completions per prompt, sampled with temperature 1, top-k 50,
            top-p 1, every completion exactly `new_tokens` long: ours with no stop ids, TRL
            with `min_new_tokens` = `max_completion_length` (EOS unreachable); checked;
  reward    a cheap function of the completion ids (share of even ids: the point is the
            trainer, not the reward), group advantages (r - mean) / (std + 1e-4);
  reference the frozen reference model's log-probs (`beta` > 0, default 0.04, k3 KL);
  update    one policy update per rollout batch (num_iterations 1, so neither side runs an
            old-log-prob pass), loss_type 'grpo', clip 0.2, AdamW (b1 .9, b2 .999, eps 1e-8,
            weight decay 0), global-norm clipping 1.0, constant learning rate.

TRL: `per_device_train_batch_size` = videos x G completions, gradient_accumulation_steps 1,
steps_per_generation 1 (one optimizer step = one rollout batch), `use_vllm=False`
(`transformers.generate`), gradient checkpointing off, float32 (bf16 off), no logging,
saving or eval. A `TrainerCallback` times each TRL step from `on_step_begin` to
`on_step_end`: rollout, scoring, loss, backward, clipping, optimizer step (the data loader's
fetch comes before `on_step_begin`; it is reported apart). Ours: one jitted program per
step (rollout -> reward -> reference -> update), timed to `block_until_ready`; its first
call (compile) is reported apart. The two are interleaved: each TRL step's `on_step_end`
runs one of ours, so a change of load hits both alike. The first `warmup` steps of each are
dropped; medians over `steps`. A forward hook counts the frames through TRL's ViTs per step
(policy B.G.T for generate + B.G.T for the loss, reference B.G.T) as proof of the VLM path.

Phases. TRL's come from wrapping its methods: rollout = `_generate` (chat template, image
processing, `generate`, decode), reference = its no-grad log-prob pass, reward =
`_calculate_rewards`, scoring_rest = the rest of `_generate_and_score_completions` (the
processor run again for the forward pass, advantages, metrics), update = the rest of the
step (policy forward + backward, clipping, AdamW). Ours is one program with no host clock
inside, so with `--split` (default) a second jitted program that only rolls out (and
scores) is timed after each step; reward_reference_update = step - rollout.

What differs, by design of each trainer (neither side does extra work for the comparison):
our rollout prefills each prompt once and shares its cache among the G samples, and our
update packs [prompt | c1..cG] so the ViT and the prompt run once per video, where TRL
repeats each prompt G times; TRL runs its processor (PIL normalisation, tokenisation) on
the host in every step, ours gets device arrays; TRL's sampler also suppresses the
image-context id and (min_new_tokens) EOS, ours samples from the whole vocabulary; TRL uses
sdpa attention. Torch runs `torch_threads` intra-op threads (default 1, as rollout.py's
figures: with 2 threads transformers collapses, ~10x slower, when other processes load the
CPU), XLA uses every core; both are reported. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings

from absl import app
from absl import flags
import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests")]  # run from a checkout, installed or not

import _timing  # noqa: E402  (benchmarks/, beside this file)

_VIDEOS = flags.DEFINE_integer("videos", 4, "prompts (videos) per batch")
_GENERATIONS = flags.DEFINE_integer("generations", 4, "completions per prompt (G)")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "tokens generated per completion (C)")
_FRAMES = flags.DEFINE_integer("frames", 6, "56 px frames per video (4 visual tokens each); 6 as "
                              "docs/method.md §2's training clips")
_BETA = flags.DEFINE_float("beta", 0.04, "KL weight; > 0 runs a reference model on both sides")
_LOSS_TYPE = flags.DEFINE_enum("loss_type", "grpo", ["grpo", "bnpo", "dr_grpo", "dapo"],
                               "loss normaliser (both sides)")
_LR = flags.DEFINE_float("learning_rate", 1e-5, "constant AdamW learning rate (both sides)")
_TOP_K = flags.DEFINE_integer("top_k", 50, "top-k of both samplers")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps of each side (after the warm-up)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed first steps of each side")
_SPLIT = flags.DEFINE_bool("split", True, "also time our rollout alone (one more compile) "
                           "for a per-phase split of our step")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 1, "torch intra-op threads (0: torch's default); 1 keeps transformers "
    "from collapsing when other processes load the CPU")

QUESTION = "What is your overall rating on the quality of this video?"
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<IMG_CONTEXT>", "<img>", "</img>",
           "<video>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "Frame: <IMG_CONTEXT>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer():
  """A byte-level tokenizer over the tiny checkpoint's 512 ids: the 256 byte symbols
  (no merges: one token per byte), InternVL's special tokens with `<IMG_CONTEXT>` at the
  checkpoint's image id (500), and never-produced filler ids so that every id the model
  can sample decodes."""
  from hf_tiny import IMAGE_TOKEN, VOCAB
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  first_special = IMAGE_TOKEN - SPECIAL.index("<IMG_CONTEXT>")
  vocab = {c: i for i, c in enumerate(alphabet)}
  fillers = (a + b for a in alphabet for b in alphabet)
  for i in range(len(vocab), VOCAB):
    vocab[SPECIAL[i - first_special] if 0 <= i - first_special < len(SPECIAL)
          else next(fillers)] = i
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
  hf = PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                            "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
  assert hf.context_image_token_id == IMAGE_TOKEN and len(hf) == VOCAB, (
      hf.context_image_token_id, len(hf))
  return hf


def make_processor(tokenizer, size: int):
  """transformers' `InternVLProcessor` without its video processor (that one needs
  torchvision) and with the PIL image processor: one `size` px tile per frame, ImageNet
  normalisation, `<img>` + (size/28)^2 x `<IMG_CONTEXT>` + `</img>` per frame."""
  from transformers import InternVLProcessor
  from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
      GotOcr2ImageProcessorPil)
  from transformers.processing_utils import ProcessorMixin

  class FramesProcessor(InternVLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256,
                 chat_template=None, **kwargs):
      ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template,
                              **kwargs)
      self.image_seq_length = image_seq_length
      self.start_image_token, self.end_image_token = (tokenizer.start_image_token,
                                                      tokenizer.end_image_token)
      self.start_image_token_id = tokenizer.start_image_token_id
      self.end_image_token_id = tokenizer.end_image_token_id
      self.image_token, self.video_token = tokenizer.context_image_token, tokenizer.video_token
      self.image_token_id = tokenizer.context_image_token_id
      self.multimodal_pattern = re.compile(
          f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})")

  images = GotOcr2ImageProcessorPil(
      size={"height": size, "width": size}, crop_to_patches=False, min_patches=1,
      max_patches=1, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
  return FramesProcessor(image_processor=images, tokenizer=tokenizer,
                         image_seq_length=(size // 28) ** 2, chat_template=CHAT_TEMPLATE)


def video_frames(videos: int, frames: int, size: int, seed: int = 0):
  """Random RGB frames as PIL images, [videos][frames]."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  return [[Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
           for _ in range(frames)] for _ in range(videos)]


def even_share(completion_ids, **_):
  """The reward of both sides: the share of even token ids in each completion."""
  return [sum(t % 2 == 0 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def main(_):
  _timing.apply_xla_flags()
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  import jax
  import jax.numpy as jnp
  import torch
  from datasets import Dataset
  from flax import nnx
  from transformers import PrinterCallback, TrainerCallback
  from transformers.utils import logging as hf_logging
  from trl import GRPOConfig as TRLConfig, GRPOTrainer
  from trl.data_utils import prepare_multimodal_messages
  from hf_tiny import make_hf_checkpoint
  from vqathinker_jax import model
  from vqathinker_jax.rl import grpo, rewards, rollout
  from vqathinker_jax.train import state as train_state, steps
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  hf_logging.set_verbosity_error()
  warnings.filterwarnings("ignore")

  B, G, C, T = _VIDEOS.value, _GENERATIONS.value, _NEW_TOKENS.value, _FRAMES.value
  size, beta, top_k = 56, _BETA.value, _TOP_K.value
  total_steps = _WARMUP.value + _STEPS.value
  work = pathlib.Path(tempfile.mkdtemp(prefix="grpo_vs_trl_"))
  ckpt = work / "checkpoint"
  make_hf_checkpoint(ckpt)
  tokenizer = make_tokenizer()
  processor = make_processor(tokenizer, size)
  frames = video_frames(B, T, size)
  messages = [{"role": "user", "content": QUESTION}]

  # ------------------------------------------------- the shared batch, as TRL makes it ---
  inputs = processor.apply_chat_template(
      [prepare_multimodal_messages(messages, images=f) for f in frames],
      add_generation_prompt=True, tokenize=True, return_dict=True)
  ids = np.asarray(inputs["input_ids"], np.int32)  # equal lengths: no padding on either side
  pix = np.asarray(inputs["pixel_values"], np.float32)  # [B.T, 3, H, W]
  assert ids.shape[0] == B and pix.shape == (B * T, 3, size, size), (ids.shape, pix.shape)
  P = ids.shape[1]

  # --------------------------------------------------------------------------- ours ---
  cfg = grpo.GRPOConfig(num_generations=G, beta=beta, kl_estimator="k3", epsilon=0.2,
                        loss_type=_LOSS_TYPE.value, num_iterations=1, max_completion_length=C,
                        temperature=1.0, top_k=top_k, top_p=1.0, stop_ids=(), temporal=False)
  tx = train_state.make_optimizer(_LR.value, max_grad_norm=1.0, b1=0.9, b2=0.999, eps=1e-8,
                           weight_decay=0.0)
  policy, _ = model.from_pretrained(ckpt)
  graphdef, state = train_state.init_state(policy, tx, reference=bool(cfg.beta))
  del policy
  mesh = jax.tree.leaves(state.params)[0].sharding.mesh

  def reward_fn(tokens_NC, mask_NC, labels_B, perturbed):
    m = mask_NC.astype(jnp.float32)
    total = ((tokens_NC % 2 == 0) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return dict(total=total, advantage=rewards.group_advantages(total, G, 1e-4))

  batch = dict(prompt_ids=jnp.asarray(ids), prompt_mask=jnp.ones(ids.shape, jnp.int32),
               pixel_values=jnp.asarray(pix.reshape(B, T, 3, size, size)
                                        .transpose(0, 1, 3, 4, 2)),
               labels=jnp.ones((B,), jnp.float32))
  step_fn = steps.make_grpo_step(graphdef, state, tx, cfg, reward_fn)

  @jax.jit
  def rollout_fn(params, rest, batch, rng):
    out = rollout.generate(nnx.merge(graphdef, params, rest), batch["prompt_ids"],
                           batch["prompt_mask"], batch["pixel_values"], rng=rng,
                           num_generations=G, max_new_tokens=C, temperature=1.0, top_k=top_k,
                           top_p=1.0, stop_ids=(), train=True)
    return out["tokens_NC"], reward_fn(out["tokens_NC"], out["mask_NC"], None, None)["advantage"]

  ours = {"state": state, "times": [], "rollout_times": [], "lengths": []}
  del state

  def our_step(i):
    with jax.set_mesh(mesh):
      t0 = time.perf_counter()
      ours["state"], metrics = step_fn(ours["state"], batch, jax.random.key(i))
      metrics = jax.device_get(jax.block_until_ready(metrics))
      dt = time.perf_counter() - t0
      ours["lengths"].append((int(metrics["completion_length_min"]),
                              int(metrics["completion_length_max"])))
      if _SPLIT.value:
        t0 = time.perf_counter()
        jax.block_until_ready(rollout_fn(ours["state"].params, ours["state"].rest, batch,
                                         jax.random.key(10_000 + i)))
        ours["rollout_times"].append(time.perf_counter() - t0)
    return dt

  first_s = our_step(0)  # compiles
  ours_first_rollout = ours["rollout_times"].pop() if _SPLIT.value else None
  ours["lengths"].clear()

  # ---------------------------------------------------------------------------- TRL ---
  dataset = Dataset.from_list([{"prompt": messages, "images": f} for f in frames])
  args = TRLConfig(
      output_dir=str(work / "trl"), per_device_train_batch_size=B * G,
      gradient_accumulation_steps=1, steps_per_generation=1, num_generations=G,
      max_completion_length=C, temperature=1.0, top_k=top_k, top_p=1.0,
      generation_kwargs={"min_new_tokens": C}, beta=beta, loss_type=_LOSS_TYPE.value,
      epsilon=0.2, num_iterations=1, scale_rewards="group", learning_rate=_LR.value,
      lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", adam_beta1=0.9,
      adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
      max_steps=total_steps, gradient_checkpointing=False, bf16=False, fp16=False,
      use_cpu=True, use_vllm=False, report_to="none", save_strategy="no", eval_strategy="no",
      logging_strategy="no", logging_steps=10 ** 6, disable_tqdm=True, log_completions=False,
      dataloader_num_workers=0, seed=0, model_init_kwargs={"dtype": "float32"})
  t0 = time.perf_counter()
  trainer = GRPOTrainer(model=str(ckpt), reward_funcs=even_share, args=args,
                        train_dataset=dataset, processing_class=processor)
  trl_setup_s = time.perf_counter() - t0
  assert trainer.beta == 0 or trainer.ref_model is not None
  vit_frames = {"policy": 0, "reference": 0}  # proves TRL's VLM path: frames through the ViT

  def count_frames(name):
    def hook(module, args, kwargs):
      pix = kwargs.get("pixel_values", args[0] if args else None)
      vit_frames[name] += int(pix.shape[0])
    return hook
  for name, m in (("policy", trainer.model), ("reference", trainer.ref_model)):
    if m is not None:
      m.model.vision_tower.register_forward_pre_hook(count_frames(name), with_kwargs=True)

  phase = {}  # seconds of the current step by phase

  def timed(fn, name, when=lambda: True):
    def call(*a, **kw):
      if not when():
        return fn(*a, **kw)
      t = time.perf_counter()
      try:
        return fn(*a, **kw)
      finally:
        phase[name] = phase.get(name, 0.0) + time.perf_counter() - t
    return call

  trainer.remove_callback(PrinterCallback)  # it prints the final log on stdout
  trainer._generate = timed(trainer._generate, "rollout")
  trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions,
                                                  "generate_and_score")
  trainer._get_per_token_logps_and_entropies = timed(
      trainer._get_per_token_logps_and_entropies, "reference",
      when=lambda: not torch.is_grad_enabled())
  trainer._calculate_rewards = timed(trainer._calculate_rewards, "reward")
  fetch = []
  get_batch_samples = trainer.get_batch_samples

  def timed_fetch(*a, **kw):
    t = time.perf_counter()
    out = get_batch_samples(*a, **kw)
    fetch.append(time.perf_counter() - t)
    return out
  trainer.get_batch_samples = timed_fetch

  trl = {"times": [], "phases": [], "lengths": [], "vit_frames": []}

  class Interleave(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
      phase.clear()
      vit_frames.update(policy=0, reference=0)
      self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
      trl["times"].append(time.perf_counter() - self.t0)
      trl["phases"].append(dict(phase))
      trl["vit_frames"].append(dict(vit_frames))
      m = trainer._metrics["train"]  # flushed at logging steps: read it here
      trl["lengths"].append((int(m["completions/min_length"][-1]),
                             int(m["completions/max_length"][-1])))
      ours["times"].append(our_step(state.global_step))

  trainer.add_callback(Interleave())
  trainer.train()
  shutil.rmtree(work, ignore_errors=True)
  trl_lengths = (min(a for a, _ in trl["lengths"]), max(b for _, b in trl["lengths"]))
  assert trl_lengths == (C, C), f"TRL completions not all {C} tokens: {trl_lengths}"
  ours_lengths = (min(a for a, _ in ours["lengths"]), max(b for _, b in ours["lengths"]))
  assert ours_lengths == (C, C), f"our completions not all {C} tokens: {ours_lengths}"
  assert len(trl["times"]) == len(ours["times"]) == total_steps, (trl["times"], ours["times"])

  # ------------------------------------------------------------------------- report ---
  w = _WARMUP.value
  trl_t, our_t = trl["times"][w:], ours["times"][w:]
  med = lambda xs: statistics.median(xs)

  def trl_phases(p):
    gs = p.get("generate_and_score", 0.0)
    roll, ref, rew = p.get("rollout", 0.0), p.get("reference", 0.0), p.get("reward", 0.0)
    return {"rollout": roll, "reference": ref, "reward": rew,
            "scoring_rest": gs - roll - ref - rew}
  steps_p = [trl_phases(p) for p in trl["phases"][w:]]
  trl_split = {k: round(med([p[k] for p in steps_p]), 4) for k in steps_p[0]}
  trl_split["update"] = round(med([t - sum(p.values()) for t, p in zip(trl_t, steps_p)]), 4)

  report = {
      "comparison": "VLM path on both sides: ViT + projector + LM, frames given to TRL as images",
      "batch": {"videos": B, "generations": G, "completions": B * G, "new_tokens": C,
                "frames_per_video": T, "frame_px": size, "prompt_tokens": P,
                "visual_tokens_per_video": T * (size // 28) ** 2,
                "generated_tokens": B * G * C},
      "training": {"beta": beta, "kl": "k3", "loss_type": _LOSS_TYPE.value, "epsilon": 0.2,
                   "num_iterations": 1, "optimizer": "AdamW(b1 .9, b2 .999, eps 1e-8, wd 0)",
                   "max_grad_norm": 1.0, "learning_rate": _LR.value, "dtype": "float32",
                   "reward": "share of even token ids; advantages (r - mean_G) / (std_G + 1e-4)"},
      "sampling": {"temperature": 1.0, "top_k": top_k, "top_p": 1.0,
                   "completion_lengths_min_max": {"ours": ours_lengths, "trl": trl_lengths}},
      **_timing.environment(), "torch_threads": torch.get_num_threads(),
      "versions": {"torch": torch.__version__, "trl": __import__("trl").__version__,
                   "transformers": __import__("transformers").__version__},
      "warmup_steps": w, "timed_steps": _STEPS.value,
      "ours": {**_timing.summary(our_t, 4),
               "warmup_runs_s": [round(t, 4) for t in ours["times"][:w]],
               "first_step_s": round(first_s, 2),
               "compile_s": round(first_s - med(our_t), 2),
               "vit_frames_per_step": {"rollout": B * T, "reference": B * T if beta else 0,
                                       "policy": B * T},
               "steps_per_s": round(1 / med(our_t), 3)},
      "trl": {**_timing.summary(trl_t, 4),
              "warmup_runs_s": [round(t, 4) for t in trl["times"][:w]],
              "phases_median_s": trl_split,
              "dataloader_fetch_median_s": round(med(fetch[w:]), 4) if fetch[w:] else None,
              "setup_s": round(trl_setup_s, 2),
              "vit_frames_per_step": trl["vit_frames"][-1],
              "attn_implementation": trainer.model.config._attn_implementation,
              "steps_per_s": round(1 / med(trl_t), 3)},
  }
  if _SPLIT.value:
    roll = med(ours["rollout_times"][w:])
    report["ours"]["phases_median_s"] = {
        "rollout": round(roll, 4), "reward_reference_update": round(med(our_t) - roll, 4),
        "rollout_compile_s": round(ours_first_rollout - roll, 2),
        "note": "rollout timed as its own program after each step; the rest = step - rollout"}
  report["speedup"] = round(med(trl_t) / med(our_t), 2)
  report["speedup_rollout"] = round(trl_split["rollout"] / med(ours["rollout_times"][w:]), 2) \
      if _SPLIT.value else None
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  app.run(main)
