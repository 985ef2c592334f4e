"""The model shapes the benchmarks run: a tiny random InternVL (per-operation overhead
dominates) and an InternVL3-1B-shaped one (real widths and depths, random weights: matmuls
and memory traffic dominate, as in a user's run), each as a transformers checkpoint both
sides load, with a prompt batch and the work counts that the rooflines divide.

Legend: B videos, T frames, S frame side (px), P prompt tokens, G completions per video,
C new tokens per completion, D width.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmark model: the transformers `InternVLConfig` fields that differ by shape."""
  name: str
  vision: dict            # InternVLConfig.vision_config
  text: dict              # InternVLConfig.text_config (Qwen2)
  image_token_id: int     # the `<IMG_CONTEXT>` id
  frame_px: int           # S: one 448 px tile per frame gives 256 visual tokens
  randomize: bool         # tiny: random values everywhere (hf_tiny.randomize_); 1B: HF's init

  @property
  def tokens_per_frame(self) -> int:
    return (self.frame_px // 28) ** 2

  @property
  def vocab(self) -> int:
    return self.text["vocab_size"]


TINY = Shape(
    name="tiny",
    vision=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, image_size=56),
    text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=128, vocab_size=512,
              max_position_embeddings=1024, rope_theta=10000.0),
    image_token_id=500, frame_px=56, randomize=True)

# InternVL3-1B as released: InternViT-300M-448px-V2.5 + Qwen2.5-0.5B with an untied head
# (938,193,024 parameters; configs/internvl3_1b_lsvq.py).
INTERNVL3_1B = Shape(
    name="internvl3_1b",
    vision=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                intermediate_size=4096, image_size=448),
    text=dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
              num_key_value_heads=2, intermediate_size=4864, vocab_size=151674,
              max_position_embeddings=32768, rope_theta=1_000_000.0),
    image_token_id=151667, frame_px=448, randomize=False)

SHAPES = {s.name: s for s in (TINY, INTERNVL3_1B)}


def hf_config(shape: Shape):
  """The transformers `InternVLConfig` of ``shape``."""
  from transformers import InternVLConfig
  return InternVLConfig(
      vision_config=dict(shape.vision, patch_size=14, attention_bias=True, use_qk_norm=False,
                         norm_type="layer_norm", use_mean_pooling=True),
      text_config=dict(shape.text, model_type="qwen2", tie_word_embeddings=False),
      image_token_id=shape.image_token_id, image_seq_length=shape.tokens_per_frame,
      tie_word_embeddings=False)


def make_checkpoint(shape: Shape, path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """Writes a random float32 checkpoint of ``shape`` (`save_pretrained`) at ``path``."""
  import torch
  from transformers import InternVLForConditionalGeneration
  torch.manual_seed(seed)
  hf = InternVLForConditionalGeneration(hf_config(shape)).eval()
  if shape.randomize:
    from hf_tiny import randomize_
    randomize_(hf, seed)
  hf.save_pretrained(path)
  return path


def prompt_batch(shape: Shape, videos: int, frames: int, text: int, seed: int = 0):
  """B equal-length prompts: ``text`` random text ids, T x tokens_per_frame image slots,
  ``text`` ids; random frames [B, T, S, S, 3] (float32, already normalised)."""
  rng = np.random.default_rng(seed)
  slots = frames * shape.tokens_per_frame
  ids = rng.integers(0, min(shape.image_token_id, 151643), (videos, 2 * text + slots))
  ids[:, text:text + slots] = shape.image_token_id
  pix = rng.standard_normal((videos, frames, shape.frame_px, shape.frame_px, 3))
  return ids.astype(np.int32), pix.astype(np.float32)


def lm_weight_count(shape: Shape) -> int:
  """Parameters one decode step reads: every decoder layer, the final norm and the LM head
  (the embedding table is gathered one row per token)."""
  t = shape.text
  D, F, L = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
  E = D // t["num_attention_heads"]
  q, kv = t["num_attention_heads"] * E, t["num_key_value_heads"] * E
  attn = D * q + q + 2 * (D * kv + kv) + q * D
  per_layer = attn + 3 * D * F + 2 * D
  return L * per_layer + D + D * t["vocab_size"]


def decode_bytes(shape: Shape, dtype_bytes: int, videos: int, generations: int, prompt: int,
                 new_tokens: int) -> float:
  """The least memory traffic of one decode step, averaged over the C steps: the weights
  once, each video's prompt K/V once (our rollout shares it among the G rows) and each row's
  own completion K/V so far (mean C/2 tokens)."""
  t = shape.text
  kv_token = 2 * t["num_hidden_layers"] * t["num_key_value_heads"] * (
      t["hidden_size"] // t["num_attention_heads"]) * dtype_bytes
  return (lm_weight_count(shape) * dtype_bytes + videos * prompt * kv_token
          + videos * generations * (new_tokens / 2) * kv_token)


def _vit_flops(shape: Shape) -> float:
  """Forward FLOPs of the ViT and projector for one frame (matmuls and attention)."""
  v, D_t = shape.vision, shape.text["hidden_size"]
  D, F, L = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
  n = (shape.frame_px // 14) ** 2 + 1  # patches + CLS
  layers = L * (2 * n * (4 * D * D + 2 * D * F) + 4 * n * n * D)
  patchify = 2 * (n - 1) * 3 * 14 * 14 * D
  k = shape.tokens_per_frame  # after the 2 x 2 pixel shuffle: 4 D wide
  projector = 2 * k * (4 * D * D_t + D_t * D_t)
  return layers + patchify + projector


def _lm_flops(shape: Shape, tokens: int, attended_pairs: float, head_tokens: int) -> float:
  """Forward FLOPs of the decoder over ``tokens`` (``attended_pairs`` query-key pairs in
  all) and of the LM head over ``head_tokens``."""
  t = shape.text
  D, F, L, V = (t[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                               "vocab_size"))
  E = D // t["num_attention_heads"]
  q, kv = t["num_attention_heads"] * E, t["num_key_value_heads"] * E
  per_token = L * 2 * (2 * D * q + 2 * D * kv + 3 * D * F)
  return tokens * per_token + L * 4 * q * attended_pairs + 2 * head_tokens * D * V


def update_flops(shape: Shape, videos: int, generations: int, prompt: int, new_tokens: int,
                 frames: int, beta: float) -> float:
  """Model FLOPs of one GRPO update as our packed layout does it (recomputation not
  counted, as MFU counts): per video, the ViT over its T frames and the decoder over
  [prompt | c_1 .. c_G] (the prompt once; each completion attends to the prompt and its
  own prefix), the LM head over the G.C completion tokens; forward + backward = 3 x
  forward, plus one forward of the reference model when beta > 0."""
  P, G, C = prompt, generations, new_tokens
  pairs = P * (P + 1) / 2 + G * C * (P + (C + 1) / 2)
  forward = frames * _vit_flops(shape) + _lm_flops(shape, P + G * C, pairs, G * C)
  return videos * forward * (3 + (1 if beta > 0 else 0))
