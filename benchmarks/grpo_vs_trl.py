"""GRPO step time: our jitted `grpo.train_step` vs TRL's `GRPOTrainer`, same work, one run.

  python benchmarks/grpo_vs_trl.py [--cores 1 --videos 4 --generations 4 --new_tokens 32
      --frames 6 --beta 0.04 --steps 20 --warmup 3 --nosplit --out FILE.json --xla_flags=...]
  python benchmarks/grpo_vs_trl.py --shape internvl3_1b --cores 2 --videos 2 \
      --new_tokens 256 --beta 0 --low_memory --sequential --roofline --steps 1 \
      --trl_warmup 0 --xla_flags=--xla_cpu_enable_concurrency_optimized_scheduler=false
      # real shapes: ~1 h on 2 cores, ~21 GB at its peak

Both sides train the same random InternVL checkpoint of `--shape` (benchmarks/shapes.py:
tiny, or InternVL3-1B's widths and depths with 448 px frames; ViT, pixel shuffle +
projector, Qwen2 decoder; float32) on the same batch: `videos` prompts, each with
`frames` random frames (given to TRL as that many images, so its VLM path runs: ViT +
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
saving or eval. `--low_memory` (real shapes on a 24 GB host): TRL with gradient
checkpointing (its default) and one video's G completions per device batch over `videos`
accumulation steps (still one optimizer step and one generation per rollout batch); ours
with remat and the ViT blocks and decoder layers each one scanned loop (`scan_layers`),
the whole batch in one gradient pass. `--sequential`: each process alone in turn (two 1B
trainers do not fit in memory together), instead of interleaved calls. `--roofline`: a
float32 matmul and a memory copy timed as contenders in the same run; the report then
gives our update's model FLOPs (`shapes.update_flops`) per second of (step - rollout) as a
share of the matmul peak, and one decode step's least bytes (`shapes.decode_bytes`) per
second of ((rollout - 1-token rollout) / (C - 1)) as a share of the copy bandwidth.
`--trl_warmup 0` times TRL's first step too (it compiles nothing), for steps of minutes.

Like for like (`_timing.isolated`): each side runs in its own process, both pinned to the
same `cores` cores (torch with that many intra-op threads; ours one JAX device, XLA's
threads on those cores), and the calls come in a random order per round, so a change of
load hits both alike and neither always follows the other. TRL's `train()` runs in a
thread that a callback holds after each step: one call is one TRL step, its data loader's
fetch included (reported apart, ~1 ms), then rollout, scoring, loss, backward, clipping,
optimizer step. Ours: one call is one jitted program (rollout -> reward -> reference ->
update), timed to `block_until_ready`; its first call (compile) is reported apart. The
first `warmup` steps of each are untimed; medians and quartiles over `steps`. A forward
hook counts the frames through TRL's ViTs per step (policy B.G.T for generate + B.G.T for
the loss, reference B.G.T) as proof of the VLM path.

Phases. TRL's come from wrapping its methods: rollout = `_generate` (chat template, image
processing, `generate`, decode), reference = its no-grad log-prob pass, reward =
`_calculate_rewards`, scoring_rest = the rest of `_generate_and_score_completions` (the
processor run again for the forward pass, advantages, metrics), update = the rest of the
step (policy forward + backward, clipping, AdamW). Ours is one program with no host clock
inside, so with `--split` (default) a third contender (its own process) runs a jitted
program that only rolls out (and scores); reward_reference_update = step - rollout.

What differs, by design of each trainer (neither side does extra work for the comparison):
our rollout prefills each prompt once and shares its cache among the G samples, and our
update packs [prompt | c1..cG] so the ViT and the prompt run once per video, where TRL
repeats each prompt G times; TRL runs its processor (PIL normalisation, tokenisation) on
the host in every step, ours gets device arrays; TRL's sampler also suppresses the
image-context id and (min_new_tokens) EOS, ours samples from the whole vocabulary; TRL uses
sdpa attention. Prints one JSON object (and writes it to `--out`) with the provenance:
date, CPU model, commit, command, load.
"""

from __future__ import annotations

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
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests"), str(_ROOT / "benchmarks")]

import _timing  # noqa: E402  (benchmarks/, beside this file)
from grpo_ours import ours  # noqa: E402

_VIDEOS = flags.DEFINE_integer("videos", 4, "prompts (videos) per batch")
_GENERATIONS = flags.DEFINE_integer("generations", 4, "completions per prompt (G)")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "tokens generated per completion (C)")
_SHAPE = flags.DEFINE_enum("shape", "tiny", ["tiny", "internvl3_1b"],
                           "the model (benchmarks/shapes.py): tiny, or InternVL3-1B's widths and "
                           "depths (random weights) with 448 px frames (256 visual tokens each)")
_CKPT = flags.DEFINE_string("ckpt", "", "an existing checkpoint of --shape to use (default: a "
                            "fresh random one, written to a temporary folder)")
_FRAMES = flags.DEFINE_integer("frames", 6, "frames per video (tiny: 56 px, 4 visual tokens "
                              "each); 6 as docs/method.md §2's training clips")
_BETA = flags.DEFINE_float("beta", 0.04, "KL weight; > 0 runs a reference model on both sides")
_LOSS_TYPE = flags.DEFINE_enum("loss_type", "grpo", ["grpo", "bnpo", "dr_grpo", "dapo"],
                               "loss normaliser (both sides)")
_LR = flags.DEFINE_float("learning_rate", 1e-5, "constant AdamW learning rate (both sides)")
_TOP_K = flags.DEFINE_integer("top_k", 50, "top-k of both samplers")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps of each side (after the warm-up)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "untimed first steps of our side (>= 1: compile)")
_TRL_WARMUP = flags.DEFINE_integer("trl_warmup", -1, "untimed first steps of TRL's (-1: as "
                                   "--warmup; 0: its first step is timed too, as it compiles "
                                   "nothing: for real shapes, where a step takes many minutes)")
_TRL_STEPS = flags.DEFINE_integer("trl_steps", -1, "timed steps of TRL's (-1: as --steps)")
_LOW_MEMORY = flags.DEFINE_bool(
    "low_memory", False, "each side's memory settings for real shapes, recomputed layers on "
    "both: ours remat full with the ViT blocks and decoder layers scanned (scan_layers), the "
    "whole batch in one gradient pass; TRL gradient checkpointing (its default) and one "
    "video's G completions per device batch, `videos` accumulation steps")
_SEQUENTIAL = flags.DEFINE_bool("sequential", False, "each side alone in turn (random order) "
                                "instead of interleaved: for shapes whose two trainers do not "
                                "fit in memory together")
_ROOFLINE = flags.DEFINE_bool("roofline", False, "also time a float32 matmul (the peak an MFU "
                              "divides by) as a contender in the same run")
_SPLIT = flags.DEFINE_bool("split", True, "also time our rollout alone (one more compile) "
                           "for a per-phase split of our step")
_CORES = flags.DEFINE_integer("cores", 1, "cores each side is pinned to (torch threads)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the call order")
_OUT = flags.DEFINE_string("out", "", "also write the JSON here")

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


def make_tokenizer(shape=None):
  """A byte-level tokenizer over the checkpoint's ids (tiny: 512): the 256 byte symbols
  (no merges: one token per byte), InternVL's special tokens with `<IMG_CONTEXT>` at the
  checkpoint's image id, and never-produced filler ids (pairs, then triples of symbols) so
  that every id the model can sample decodes."""
  import itertools
  from shapes import TINY
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  shape = shape or TINY
  IMAGE_TOKEN, VOCAB = shape.image_token_id, shape.vocab
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  first_special = IMAGE_TOKEN - SPECIAL.index("<IMG_CONTEXT>")
  vocab = {c: i for i, c in enumerate(alphabet)}
  fillers = itertools.chain((a + b for a in alphabet for b in alphabet),
                            (a + b + c for a in alphabet for b in alphabet for c in alphabet))
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


def _trl_args(out_dir, B, G, C, beta, loss_type, lr, top_k, max_steps, micro=False):
  """TRL's settings; ``micro``: one video's G completions per device batch, accumulated
  over the B videos of one generation batch, layers recomputed in the backward pass."""
  from trl import GRPOConfig as TRLConfig
  return TRLConfig(
      output_dir=str(out_dir), per_device_train_batch_size=G if micro else B * G,
      gradient_accumulation_steps=B if micro else 1,
      steps_per_generation=B if micro else 1, num_generations=G,
      max_completion_length=C, temperature=1.0, top_k=top_k, top_p=1.0,
      generation_kwargs={"min_new_tokens": C}, beta=beta, loss_type=loss_type,
      epsilon=0.2, num_iterations=1, scale_rewards="group", learning_rate=lr,
      lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", adam_beta1=0.9,
      adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
      max_steps=max_steps, gradient_checkpointing=micro, bf16=False, fp16=False,
      use_cpu=True, use_vllm=False, report_to="none", save_strategy="no", eval_strategy="no",
      logging_strategy="no", logging_steps=10 ** 6, disable_tqdm=True, log_completions=False,
      dataloader_num_workers=0, seed=0, model_init_kwargs={"dtype": "float32"})


def trl(ckpt: str, work: dict, cores: int, max_steps: int, warmup: int):
  """TRL's contender (its own process): `GRPOTrainer.train()` in a thread that a callback
  holds after each step, so that one call = one TRL step (its data loader's fetch, rollout,
  scoring, loss, backward, clipping, optimizer step)."""
  import threading
  import torch
  from datasets import Dataset
  from transformers import PrinterCallback, TrainerCallback
  from transformers.utils import logging as hf_logging
  from trl import GRPOTrainer
  torch.set_num_threads(cores)
  hf_logging.set_verbosity_error()
  warnings.filterwarnings("ignore")
  B, G, C, T, size = (work[k] for k in ("videos", "generations", "new_tokens", "frames", "size"))
  from shapes import SHAPES
  tokenizer = make_tokenizer(SHAPES[work["shape"]])
  processor = make_processor(tokenizer, size)
  messages = [{"role": "user", "content": QUESTION}]
  dataset = Dataset.from_list([{"prompt": messages, "images": f}
                               for f in video_frames(B, T, size)])
  out_dir = pathlib.Path(tempfile.mkdtemp(prefix="grpo_vs_trl_trl_"))
  args = _trl_args(out_dir, B, G, C, work["beta"], work["loss_type"], work["learning_rate"],
                   work["top_k"], max_steps, work["low_memory"])
  t0 = time.perf_counter()
  trainer = GRPOTrainer(model=ckpt, reward_funcs=even_share, args=args, train_dataset=dataset,
                        processing_class=processor)
  setup_s = time.perf_counter() - t0
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
  trainer.get_batch_samples = timed(trainer.get_batch_samples, "fetch")
  rec = {"times": [], "phases": [], "lengths": [], "vit_frames": []}
  go, done, failed = threading.Semaphore(0), threading.Semaphore(0), []

  class Gate(TrainerCallback):
    """Holds the trainer before its first step and after each one until the next call."""

    def on_train_begin(self, args, state, control, **kwargs):
      go.acquire()

    def on_step_begin(self, args, state, control, **kwargs):
      vit_frames.update(policy=0, reference=0)
      self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
      rec["times"].append(time.perf_counter() - self.t0)
      rec["phases"].append(dict(phase))
      phase.clear()  # the next step's fetch comes before on_step_begin
      rec["vit_frames"].append(dict(vit_frames))
      m = trainer._metrics["train"]  # flushed at logging steps: read it here
      rec["lengths"].append((int(m["completions/min_length"][-1]),
                             int(m["completions/max_length"][-1])))
      done.release()
      if state.global_step < max_steps:
        go.acquire()

  def train():
    try:
      trainer.train()
    except BaseException as e:  # noqa: BLE001  (raised again by the waiting call)
      failed.append(e)
      done.release()

  trainer.add_callback(Gate())
  threading.Thread(target=train, daemon=True).start()

  def call(i):
    go.release()
    done.acquire()
    if failed:
      raise failed[0]
    return rec["lengths"][-1]

  def report():
    def split(p):
      gs = p.get("generate_and_score", 0.0)
      roll, ref, rew = p.get("rollout", 0.0), p.get("reference", 0.0), p.get("reward", 0.0)
      return {"rollout": roll, "reference": ref, "reward": rew,
              "scoring_rest": gs - roll - ref - rew}
    med = statistics.median
    timed_steps = list(zip(rec["times"], rec["phases"]))[warmup:]
    steps_p = [split(p) for _, p in timed_steps]
    phases = {k: round(med([p[k] for p in steps_p]), 4) for k in steps_p[0]}
    phases["update"] = round(med([t - sum(p.values()) for (t, _), p
                                  in zip(timed_steps, steps_p)]), 4)
    fetch = [p.get("fetch", 0.0) for _, p in timed_steps]
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"phases_median_s": phases,
            "step_callback_median_s": round(med([t for t, _ in timed_steps]), 4),
            "dataloader_fetch_median_s": round(med(fetch), 4),
            "setup_s": round(setup_s, 2), "vit_frames_per_step": rec["vit_frames"][-1],
            "attn_implementation": trainer.model.config._attn_implementation,
            "completion_lengths_min_max": [min(a for a, _ in rec["lengths"]),
                                           max(b for _, b in rec["lengths"])],
            "versions": {"torch": torch.__version__, "trl": __import__("trl").__version__,
                         "transformers": __import__("transformers").__version__}}
  call.report = report
  return call


def main(_):
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  from trl.data_utils import prepare_multimodal_messages
  from shapes import SHAPES, decode_bytes, make_checkpoint, update_flops
  cores = sorted(os.sched_getaffinity(0))[:_CORES.value]
  if len(cores) < _CORES.value:
    raise app.UsageError(f"--cores={_CORES.value}: this process may use {len(cores)}")
  B, G, C, T = _VIDEOS.value, _GENERATIONS.value, _NEW_TOKENS.value, _FRAMES.value
  shape = SHAPES[_SHAPE.value]
  size, beta, top_k, w = shape.frame_px, _BETA.value, _TOP_K.value, _WARMUP.value
  trl_w = w if _TRL_WARMUP.value < 0 else _TRL_WARMUP.value
  trl_steps = _STEPS.value if _TRL_STEPS.value < 0 else _TRL_STEPS.value
  if w < 1 or trl_w + trl_steps < 1:
    raise app.UsageError("--warmup must be >= 1 (our compile) and TRL must make a step")
  work_dir = pathlib.Path(tempfile.mkdtemp(prefix="grpo_vs_trl_"))
  ckpt = pathlib.Path(_CKPT.value) if _CKPT.value else make_checkpoint(
      shape, work_dir / "checkpoint")  # one checkpoint for both sides
  processor = make_processor(make_tokenizer(shape), size)
  # The shared batch, as TRL's processor makes it: our side gets exactly these ids/pixels.
  inputs = processor.apply_chat_template(
      [prepare_multimodal_messages([{"role": "user", "content": QUESTION}], images=f)
       for f in video_frames(B, T, size)], add_generation_prompt=True, tokenize=True,
      return_dict=True)
  ids = np.asarray(inputs["input_ids"], np.int32)  # equal lengths: no padding on either side
  pix = np.asarray(inputs["pixel_values"], np.float32)  # [B.T, 3, H, W]
  assert ids.shape[0] == B and pix.shape == (B * T, 3, size, size), (ids.shape, pix.shape)
  P = ids.shape[1]
  work = dict(videos=B, generations=G, new_tokens=C, frames=T, size=size, beta=beta,
              loss_type=_LOSS_TYPE.value, learning_rate=_LR.value, top_k=top_k,
              shape=shape.name, low_memory=_LOW_MEMORY.value)
  contenders = {"ours": (ours, dict(ckpt=str(ckpt), ids=ids, pix=pix, work=work)),
                "trl": (trl, dict(ckpt=str(ckpt), work=work, cores=len(cores),
                                  max_steps=trl_w + trl_steps, warmup=trl_w))}
  if _SPLIT.value:
    contenders["ours_rollout"] = (ours, dict(ckpt=str(ckpt), ids=ids, pix=pix, work=work,
                                             rollout_only=True))
  env = {"OMP_NUM_THREADS": str(len(cores)), "TOKENIZERS_PARALLELISM": "false",
         "XLA_FLAGS": " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                             _timing.xla_flags_value()]))}
  if _SPLIT.value and C > 1:  # the decode step's time: rollout(C) - rollout(1) over C - 1
    contenders["ours_rollout_1"] = (ours, dict(ckpt=str(ckpt), ids=ids, pix=pix,
                                               work=dict(work, new_tokens=1),
                                               rollout_only=True))
  if _ROOFLINE.value:
    contenders["matmul_peak"] = (_timing.matmul_call, {})
    contenders["copy_bandwidth"] = (_timing.copy_call, dict(threads=len(cores)))
  # With trl_warmup 0, TRL's first step is the first of its timed ones.
  r = _timing.isolated(contenders, {**{name: _STEPS.value for name in contenders},
                                    "trl": trl_steps},
                       cores=cores, env=env, seed=_SEED.value,
                       warmup={**{name: w for name in contenders}, "trl": trl_w},
                       sequential=_SEQUENTIAL.value)
  shutil.rmtree(work_dir, ignore_errors=True)
  ours_lengths = r["reports"]["ours"]["completion_lengths_min_max"]
  trl_lengths = r["reports"]["trl"]["completion_lengths_min_max"]
  assert trl_lengths == [C, C], f"TRL completions not all {C} tokens: {trl_lengths}"
  assert ours_lengths == [C, C], f"our completions not all {C} tokens: {ours_lengths}"

  med = statistics.median
  our_t, trl_t = r["times_s"]["ours"], r["times_s"]["trl"]
  trl_report = r["reports"]["trl"]
  limits = _timing.roofline(r)
  report = {
      **_timing.provenance(),
      "setup": f"like for like: each side in its own process, pinned to the same {len(cores)} "
               f"core(s) (torch {len(cores)} thread(s), ours one JAX device); " + (
                   "each process alone in turn (random order; the two do not fit in memory "
                   "together)" if _SEQUENTIAL.value else "calls in a random order per round"),
      "shape": shape.name, "low_memory": _LOW_MEMORY.value,
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
      "cores": r["cores"], "env": env, "load_average": r["load_average"],
      "predecessors": r["predecessors"], "order_seed": _SEED.value,
      **({"load_by_contender": r["load_by_contender"]} if _SEQUENTIAL.value else {}),
      "versions": trl_report.pop("versions"), "warmup_steps": {"ours": w, "trl": trl_w},
      "timed_steps": _STEPS.value, **limits,
      "ours": {**_timing.summary(our_t, 4), "first_step_s": round(r["first_s"]["ours"], 2),
               "compile_s": round(r["first_s"]["ours"] - med(our_t), 2),
               "vit_frames_per_step": {"rollout": B * T, "reference": B * T if beta else 0,
                                       "policy": B * T},
               "steps_per_s": round(1 / med(our_t), 3)},
      "trl": {**_timing.summary(trl_t, 4), **trl_report,
              "steps_per_s": round(1 / med(trl_t), 3)},
  }
  report["speedup"] = round(med(trl_t) / med(our_t), 2)
  q1, _, q3 = statistics.quantiles([t / o for t, o in zip(trl_t, our_t)], n=4,
                                   method="inclusive") if len(our_t) > 1 else [0.0] * 3
  report["speedup_quartiles"] = [round(q1, 2), round(q3, 2)]
  if _SPLIT.value:
    roll = med(r["times_s"]["ours_rollout"])
    report["ours"]["phases_median_s"] = {
        "rollout": round(roll, 4), "reward_reference_update": round(med(our_t) - roll, 4),
        "note": "rollout timed as its own program (own process); the rest = step - rollout"}
    report["speedup_rollout"] = round(trl_report["phases_median_s"]["rollout"] / roll, 2)
    # The update's FLOP rate: model FLOPs of our packed update (shapes.update_flops) over
    # the step's time less the rollout's (the rewards are negligible).
    flops = update_flops(shape, B, G, P, C, T, beta)
    u = _timing.update_rate(med(our_t), roll, flops, limits)
    rounded = lambda x, digits: None if x is None else round(x, digits)  # None: noise
    report["ours"]["update"] = {"model_tflops": round(flops / 1e12, 3),
                                "gflops_per_s": rounded(u["gflops_per_s"], 1)}
    if "matmul_peak_gflops" in limits:
      report["ours"]["update"]["fraction_of_matmul_peak"] = rounded(
          u["fraction_of_matmul_peak"], 3)
    if "ours_rollout_1" in r["times_s"]:
      # One decode step: the rollout less its prefill (a 1-token rollout), over C - 1 steps,
      # against the least bytes it must move (shapes.decode_bytes: weights, K/V).
      prefill = med(r["times_s"]["ours_rollout_1"])
      moved = decode_bytes(shape, 4, B, G, P, C)
      d = _timing.decode_step(roll, prefill, C, moved, limits)
      report["ours"]["decode_step"] = {
          "median_s": round(d["step_s"], 4), "least_bytes_gb": round(moved / 1e9, 3),
          "prefill_s": round(prefill, 3)}
      # Rates only where they are measured (not noise, a bandwidth timed).
      for key, digits in (("gb_per_s", 2), ("fraction_of_copy_bandwidth", 3)):
        if d[key] is not None:
          report["ours"]["decode_step"][key] = round(d[key], digits)
  _timing.emit(report, _OUT.value)


if __name__ == "__main__":
  app.run(main)
