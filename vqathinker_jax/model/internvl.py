"""The InternVL3 multimodal model (Flax NNX): ViT + mlp1 (+ SlowFast and the motion
token) + the Qwen2 decoder, and its random initialisation on a mesh.

    m = families.init(cfg, seed=0, mesh=mesh)   # model.init
    logits_BTV = m(input_ids=ids_BT, pixel_values=pix_NHWC, attention_mask=mask_BT)

Loading and export live in `hf_checkpoint`, initialisation in `families` (both import this
module, never the reverse).

Legend: B batch (videos), T tokens, D LLM width, V vocabulary, N frames (all videos, in
order of appearance), H/W pixels, M visual tokens of the batch, P tokens per frame.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqathinker_jax.model import layers, llm, sharding, slowfast, vlm
from vqathinker_jax.model.config import DTYPES, ModelConfig
from vqathinker_jax.model.motion import MotionProjector
from vqathinker_jax.model.vision import VisionTower


def check_inputs(cfg: ModelConfig, input_ids, pixel_values, train: bool = False) -> None:
  """Checks with messages that name the problem, before anything compiles.

  Shapes are checked always; slot counts only when `input_ids` is concrete.
  """
  if input_ids is None:
    return
  concrete = vlm.check_ids(input_ids)
  slots_B = (np.asarray(input_ids) == cfg.image_token_id).sum(1) if concrete else None
  if pixel_values is None:
    if concrete and slots_B.sum():
      raise ValueError(f"input_ids hold {slots_B.sum()} <IMG_CONTEXT> tokens (id "
                       f"{cfg.image_token_id}) but no pixel_values were given")
    return
  shape = vlm.check_pixels(pixel_values, 2 * cfg.vision.patch_size,
                           "patch size x pixel-shuffle factor")
  step = 2 * cfg.vision.patch_size
  per_frame = (shape[-3] // step) * (shape[-2] // step)
  if len(shape) == 5:
    if shape[0] != np.shape(input_ids)[0]:
      raise ValueError(f"{shape[0]} videos of frames for {np.shape(input_ids)[0]} sequences")
    if cfg.motion is not None:
      slowfast.check_frames(shape, pixel_values.dtype, train, cfg.motion)
    expect = shape[1] * per_frame + (cfg.motion is not None)
    if concrete and (slots_B != expect).any():
      row = int(np.argmax(slots_B != expect))
      motion = " + 1 motion token" if cfg.motion is not None else ""
      raise ValueError(f"sequence {row} holds {slots_B[row]} <IMG_CONTEXT> slots, but its "
                       f"{shape[1]} frames x {per_frame} tokens{motion} = {expect}")
  elif concrete and slots_B.sum() != shape[0] * per_frame:
    raise ValueError(f"{shape[0]} frames x {per_frame} tokens = {shape[0] * per_frame} visual "
                     f"tokens, but input_ids hold {slots_B.sum()} <IMG_CONTEXT> slots")


class InternVL(vlm.VisionLanguageModel):
  """ViT -> pixel shuffle -> mlp1 -> visual tokens merged into the Qwen2 decoder; with
  `cfg.motion`, VQAThinker's SlowFast motion token after each video's frames."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.vision = VisionTower(cfg, rngs)
    self.llm = llm.Qwen2(cfg.text, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
                         attention=cfg.attention, scan_layers=cfg.scan_layers)
    if cfg.motion is not None:
      dt, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
      self.slowfast = slowfast.SlowFast(cfg.motion, dtype=dt, param_dtype=pdt, rngs=rngs)
      self.motion_mlp = MotionProjector(cfg.motion.feature_dim(), cfg.text.hidden_size,
                                        dtype=dt, param_dtype=pdt, rngs=rngs)
    else:
      self.slowfast = self.motion_mlp = None
    self.cfg = cfg

  def visual_tokens(self, pixel_values, train: bool = False,
                    drop_key: jax.Array | None = None, remat: str = "off") -> jax.Array:
    """[M, D] in slot order: frame by frame for [N, H, W, 3]; for [B, T, H, W, 3], per
    video its T frames, then its motion token when the model has the motion branch.
    ``drop_key``: the ViT's drop-path masks, one per frame (`vision.drop_path`); None
    (evaluation, inference) for none. ``remat``: the ViT blocks' (`llm.REMAT_POLICIES`)."""
    # Every reshape that merges or splits the sharded batch dimension is followed by a
    # constraint, so the batch stays split as the mesh says instead of as the partitioner
    # guesses (the row-permutation bug itself is avoided by BATCH_AXES' order, sharding.py).
    pix = sharding.constrain_batch(pixel_values)
    if pix.ndim == 4:
      feats_NPD = self.vision(pix, drop_key, remat)
      return sharding.constrain_batch(feats_NPD.reshape(-1, feats_NPD.shape[-1]))
    B, T, H, W, C = pix.shape
    feats_NPD = self.vision(sharding.constrain_batch(pix.reshape(B * T, H, W, C)), drop_key,
                            remat)
    feats_BMD = sharding.constrain_batch(feats_NPD.reshape(B, -1, feats_NPD.shape[-1]))
    if self.motion_mlp is not None:
      # SlowFast is frozen: no gradient flows into it, motion_mlp trains.
      motion_BF = jax.lax.stop_gradient(self.slowfast(pix, train=train))
      motion_BD = self.motion_mlp(motion_BF).astype(feats_BMD.dtype)
      feats_BMD = jnp.concatenate([feats_BMD, motion_BD[:, None]], axis=1)
    return sharding.constrain_batch(feats_BMD.reshape(-1, feats_BMD.shape[-1]))

  def embed(self, input_ids_BT: jax.Array, pixel_values=None, train: bool = False,
            slots_BT: jax.Array | None = None, drop_key: jax.Array | None = None,
            remat: str = "off"):
    """Input embeddings [B, T, D] with visual tokens in the `<IMG_CONTEXT>` slots.

    ``slots_BT`` restricts the slots (e.g. to the prompt: a sampled completion may hold
    the `<IMG_CONTEXT>` id as an ordinary token); ``drop_key``, ``remat`` as
    `visual_tokens`.
    """
    x_BTD = self.llm.embed_tokens(input_ids_BT)
    if pixel_values is None:
      return x_BTD
    is_visual_BT = input_ids_BT == self.cfg.image_token_id
    if slots_BT is not None:
      is_visual_BT = is_visual_BT & slots_BT.astype(bool)
    return layers.merge_visual(x_BTD, is_visual_BT,
                        self.visual_tokens(pixel_values, train, drop_key, remat))

  def prompt_positions(self, input_ids_BP, attention_mask_BP, pixel_values=None):
    """(positions [B, P]: 0, 1, ... over the unmasked tokens; each row's next position
    [B], its length; a static bound on it, P). The RL code asks the model, because
    Qwen2.5-VL's are 3-D (`qwen_vl.Qwen25VL.prompt_positions`)."""
    del pixel_values
    mask_BP = jnp.asarray(attention_mask_BP).astype(jnp.int32)
    return llm.positions_from_mask(mask_BP), jnp.sum(mask_BP, axis=1), input_ids_BP.shape[1]

  def __call__(self, input_ids, pixel_values=None, attention_mask=None, *,
               train: bool = False) -> jax.Array:
    """Logits [B, T, V] (float32), V = `cfg.text.vocab_size` (the stored padding cut off;
    `llm.Qwen2.logits` keeps it). Right-padded batches: pass `attention_mask`.

    ``pixel_values``: [N, H, W, 3] frames in order of appearance, or [B, T, H, W, 3]
    videos (the motion token needs these). ``train`` picks SlowFast's training frame
    selection (docs/method.md §1).
    """
    check_inputs(self.cfg, input_ids, pixel_values, train)
    return vlm.jit_forward(self, jnp.asarray(input_ids), pixel_values, attention_mask, train)
