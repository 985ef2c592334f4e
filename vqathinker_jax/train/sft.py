"""SFT warm-start: cross-entropy on templated `<think>…</think><answer>x.xx</answer>` targets.

A random (or un-tuned) model cannot find the answer format by sampling, so GRPO would see
zero reward everywhere; a short supervised stage teaches the format and a first score.
The loss reuses GRPO's packed log-prob pass with one completion per video.
Legend: B videos, P prompt tokens, C target tokens.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vqathinker_jax.rl import grpo
from vqathinker_jax.text import demo_tokenizer, tokenizer as tok_lib
from vqathinker_jax.train.state import TrainState

ANSWERS = ("label", "random", "random_scene")  # config.sft.answer: the scores the warm-start teaches
SCENE_SHARE = 0.5  # random_scene: the share of [1, 5] the scene's draw spans (the rest: the video's)


def target_text(label: float, think: str) -> str:
  """The completion the model is taught for a video with MOS `label` in [1, 5]."""
  reason = think.format(quality=demo_tokenizer.quality_word(label))
  return f"<think>{reason}</think>\n<answer>{float(label):.2f}</answer>"


def target_length(tokenizer: tok_lib.Tokenizer, think: str) -> int:
  """Fixed target width C (so the step compiles once): the longest templated target,
  plus `<|im_end|>`, rounded up to a multiple of 8."""
  longest = max(len(tokenizer.encode(target_text(x, think)))
                for x in (1.0, 1.9, 2.7, 3.5, 4.3, 5.0))
  return -(-(longest + 1) // 8) * 8


def _unit(seed: int, key) -> float:
  """A uniform draw in [0, 1) hashed from (seed, key): the same on every run and host."""
  return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "big") / 2**64


def answers(labels_B, video_ids_B, mode: str, seed: int, scenes_B=None):
  """The scores the warm-start teaches (2 decimals, in [1, 5]).

  `label`: the labels (supervised). The random modes teach the format only, with no label
  information, so whatever ranking the model shows after GRPO its rewards taught it:
  `random` hashes a uniform score from (seed, video id); `random_scene` (the synthetic set,
  whose scenes are drawn independently of the distortions) adds two uniform draws, one per
  scene (`scenes_B`, spanning SCENE_SHARE of the range) and one per video. A score fixed
  per video keeps the model looking at the frames (a fresh draw per step teaches it to
  ignore them); the scene part is learnable in a few hundred steps and gives a model
  trained from scratch the visual grounding a pretrained VLM brings, while the video part
  keeps the answers spread, so GRPO's samples differ (docs/method.md §4, "Warm-start")."""
  labels_B = np.asarray(labels_B, np.float64)
  if mode not in ANSWERS:
    raise ValueError(f"sft answer mode {mode!r}: expected one of {ANSWERS}")
  if mode == "label":
    return labels_B
  per_video = np.array([_unit(seed, v) for v in video_ids_B])
  if mode == "random":
    return np.round(1.0 + 4.0 * per_video, 2)
  if scenes_B is None:
    raise ValueError("sft answer mode 'random_scene' needs each video's scene")
  per_scene = np.array([_unit(seed, f"scene/{s}") for s in scenes_B])
  return np.round(1.0 + SCENE_SHARE * 4.0 * per_scene + (1.0 - SCENE_SHARE) * 4.0 * per_video, 2)


def targets(tokenizer: tok_lib.Tokenizer, labels_B, think: str, length: int):
  """(ids_BC, mask_BC) int32: each target then `<|im_end|>`, right-padded."""
  seqs = [np.append(tokenizer.encode(target_text(x, think)), tokenizer.special.im_end)
          for x in np.asarray(labels_B, np.float64)]
  return tok_lib.pad_batch(seqs, tokenizer.special.pad, length)


def loss_fn(model, prompt_ids_BP, prompt_mask_BP, pixel_values, target_BC, mask_BC, chunk=256,
            remat="off"):
  """Mean token cross-entropy of the targets (through `<|im_end|>`)."""
  logp_B1C, _ = grpo.token_logprobs(model, prompt_ids_BP, prompt_mask_BP, pixel_values,
                                    target_BC[:, None], chunk=chunk, remat=remat)
  m = mask_BC.astype(jnp.float32)
  return -(logp_B1C[:, 0] * m).sum() / jnp.maximum(m.sum(), 1.0)


def step(graphdef, state: TrainState, batch: dict, tx: optax.GradientTransformation,
         chunk: int = 256, remat: str = "off"):
  """One SFT update -> (state, metrics). batch: prompt_ids/prompt_mask [B, P], pixel_values,
  targets/target_mask [B, C]. Non-finite gradients leave the state unchanged (counted)."""
  def f(params):
    m = nnx.merge(graphdef, params, state.rest)
    return loss_fn(m, batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"],
                   batch["targets"], batch["target_mask"], chunk, remat)

  loss, grads = jax.value_and_grad(f)(state.params)
  new, grad_norm, finite = state.apply_gradients(tx, loss, grads)
  skipped = (~finite).astype(jnp.int32)
  new = new.replace(step=state.step + 1, skipped=state.skipped + skipped)
  return new, dict(loss=loss, grad_norm=grad_norm, skipped=skipped)
