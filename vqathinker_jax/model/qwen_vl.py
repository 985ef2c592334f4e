"""Qwen2.5-VL (Flax NNX), the base of VisualQuality-R1 and Q-Insight: the vision tower
(`qwen_vision`) and the Qwen2 decoder of `llm` (the InternVL path's layer, with M-RoPE
positions, `mrope`), trainable with the same rollout and GRPO.

    m = init(cfg, seed=0, mesh=mesh)
    # transformers' processor outputs (grids concrete; 3-D positions computed here):
    logits_BTV = m(input_ids=ids_BT, attention_mask=mask_BT, pixel_values_videos=px_PC,
                   video_grid_thw=grid_n3, second_per_grid_ts=s_n)
    # our pipeline: normalised frames [B, T, H, W, 3] of one size, patchified on device
    logits_BTV = m.forward(ids_BT, frames_BTHWC, mask_BT)

The RL code sees the interface `InternVL` has (`embed`, `prompt_positions`, and from
`vlm.VisionLanguageModel` `hidden_states`, `forward`), so rollout, GRPO, SFT and evaluation
run on either family.
Legend: B batch, T tokens (frames in pixel arrays), D LLM width, V vocabulary, P patches,
C patch values (in_chans·2·14·14), M visual tokens of the batch, H/W pixels, n vision items.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqathinker_jax.model import layers, llm, mrope, qwen_inputs, qwen_vision, sharding, vlm
from vqathinker_jax.model.config import DTYPES, TextConfig, check_runtime_fields

FAMILY = "qwen2_5_vl"


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
  """Defaults: Qwen2.5-VL-7B-Instruct's config.json (`from_hf` reads any checkpoint's)."""
  vision: qwen_vision.QwenVisionConfig = qwen_vision.QwenVisionConfig()
  text: TextConfig = TextConfig(vocab_size=152064, max_position_embeddings=128000,
                                mrope_section=mrope.MROPE_SECTION)
  image_token_id: int = 151655         # <|image_pad|>
  video_token_id: int = 151656         # <|video_pad|>
  vision_start_token_id: int = 151652  # <|vision_start|>
  vision_end_token_id: int = 151653    # <|vision_end|>
  tokens_per_second: int = 2           # vision_config.tokens_per_second (class default: 4)
  # Seconds of video per temporal grid (2 frames) for our pipeline's clips, whose t
  # positions are floor(i · s · tokens_per_second): 2 / the frames' sampling rate.
  second_per_grid_t: float = 1.0
  dtype: str = "float32"               # compute dtype
  param_dtype: str = "float32"         # storage dtype of parameters
  attention: str = "auto"              # the decoder's kernel, as ModelConfig.attention
  scan_layers: bool = False            # the decoder's layers as one lax.scan (ModelConfig)

  family = FAMILY  # not a field: the model family, as `ModelConfig.family`
  motion = None    # InternVL's SlowFast branch: none here (docs/method.md §8)

  def __post_init__(self):
    check_runtime_fields(self)
    if self.text.mrope_section is None:
      raise ValueError("QwenVLConfig.text needs mrope_section (M-RoPE)")
    if self.vision.out_hidden_size != self.text.hidden_size:
      raise ValueError(f"vision.out_hidden_size {self.vision.out_hidden_size} != text "
                       f"hidden_size {self.text.hidden_size}")
    if not self.second_per_grid_t > 0:
      raise ValueError(f"second_per_grid_t={self.second_per_grid_t}: must be > 0")

  @property
  def image_token(self) -> int:
    """The pad id our pipeline's frames fill (`ModelConfig.image_token_id`'s role)."""
    return self.video_token_id

  def video_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(t, h, w) in patches of a clip of ``frames`` frames of ``height`` x ``width``."""
    v = self.vision
    return (-(-frames // v.temporal_patch_size), height // v.patch_size, width // v.patch_size)

  def item(self, pixel_shape) -> tuple[tuple[int, int, int], int, float | None]:
    """(grid (t, h, w), pad token id, seconds per temporal grid) of one item of our
    pipeline's pixels: a video of frames [B, T, H, W, 3], or each image of [N, H, W, 3]."""
    if len(pixel_shape) == 5:
      return self.video_grid(*pixel_shape[1:4]), self.video_token_id, self.second_per_grid_t
    return self.video_grid(1, *pixel_shape[1:3]), self.image_token_id, None

  def tokens_per_frame(self, image_size: int) -> int:
    """Visual tokens per frame pair (a temporal patch) of square frames: (size / 28)²
    (`ModelConfig.tokens_per_frame`'s role; 256 at 448 px)."""
    return (image_size // (self.vision.patch_size * self.vision.spatial_merge_size)) ** 2

  def tokens_per_video(self, frames: int, height: int, width: int) -> int:
    """<|video_pad|> slots one clip takes: t·h·w / m²."""
    return int(np.prod(self.video_grid(frames, height, width))) // self.vision.merge_unit


def check_inputs(cfg: QwenVLConfig, input_ids, pixel_values, train: bool = False) -> None:
  """Our pipeline's inputs (frames [B, T, H, W, 3] or images [N, H, W, 3]): shapes always,
  slot counts when ``input_ids`` is concrete, with messages that name the problem."""
  del train
  if input_ids is None:
    return
  concrete = vlm.check_ids(input_ids)
  ids = np.asarray(input_ids) if concrete else None
  if pixel_values is None:
    if concrete and np.isin(ids, (cfg.video_token_id, cfg.image_token_id)).any():
      raise ValueError("input_ids hold <|video_pad|>/<|image_pad|> tokens but no pixels were given")
    return
  shape = vlm.check_pixels(pixel_values, cfg.vision.patch_size * cfg.vision.spatial_merge_size,
                           "patch size x merge size; `qwen_inputs.smart_resize`")
  if len(shape) == 5 and shape[0] != np.shape(input_ids)[0]:
    raise ValueError(f"{shape[0]} videos of frames for {np.shape(input_ids)[0]} sequences")
  if not concrete:
    return
  if len(shape) == 5:
    expect, token = cfg.tokens_per_video(*shape[1:4]), cfg.video_token_id
    slots_B = (ids == token).sum(1)
    if (slots_B != expect).any():
      row = int(np.argmax(slots_B != expect))
      raise ValueError(f"sequence {row} holds {slots_B[row]} <|video_pad|> slots, but its "
                       f"{shape[1]} frames of {shape[2]}x{shape[3]} give {expect} tokens")
  else:
    expect = shape[0] * cfg.tokens_per_video(1, *shape[1:3])
    if (ids == cfg.image_token_id).sum() != expect:
      raise ValueError(f"{shape[0]} images give {expect} tokens, but input_ids hold "
                       f"{(ids == cfg.image_token_id).sum()} <|image_pad|> slots")


class Qwen25VL(vlm.VisionLanguageModel):
  """Vision tower -> merged tokens in the <|video_pad|> / <|image_pad|> slots -> the Qwen2
  decoder with 3-D (t, h, w) rotary positions."""

  def __init__(self, cfg: QwenVLConfig, rngs: nnx.Rngs):
    dt, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    self.vision = qwen_vision.QwenVisionTower(cfg.vision, dtype=dt, param_dtype=pdt, rngs=rngs)
    self.llm = llm.Qwen2(cfg.text, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs,
                         attention=cfg.attention, scan_layers=cfg.scan_layers)
    self.cfg = cfg

  # -------------------------------------------------- our pipeline: frames on device ---

  def visual_tokens(self, pixel_values, train: bool = False,
                    drop_key: jax.Array | None = None, remat: str = "off") -> jax.Array:
    """[M, D] in slot order, item by item (`QwenVLConfig.item`), each patchified on device
    in the processor's order. ``train``, ``drop_key``, ``remat``: the InternVL interface's;
    this tower has no drop-path and no remat of its own."""
    del train, drop_key, remat
    v = self.cfg.vision
    patchify = functools.partial(qwen_inputs.patchify_video, patch_size=v.patch_size,
                                 temporal_patch_size=v.temporal_patch_size,
                                 merge_size=v.spatial_merge_size)
    pix = sharding.constrain_batch(pixel_values)
    frames = pix if pix.ndim == 5 else pix[:, None]  # an image is a one-frame item
    patches = jax.vmap(lambda f: patchify(f)[0])(frames)
    grid, _, _ = self.cfg.item(pixel_values.shape)
    plan = qwen_vision.make_plan([grid] * pixel_values.shape[0], v)
    return sharding.constrain_batch(
        self.vision.encode(patches.reshape(-1, patches.shape[-1]), plan))

  def embed(self, input_ids_BT: jax.Array, pixel_values=None, train: bool = False,
            slots_BT: jax.Array | None = None, drop_key: jax.Array | None = None,
            remat: str = "off"):
    """Input embeddings [B, T, D] with the visual tokens in the pad slots (video pads for
    [B, T, H, W, 3], image pads for [N, H, W, 3]); ``slots_BT`` as `InternVL.embed`."""
    x_BTD = self.llm.embed_tokens(input_ids_BT)
    if pixel_values is None:
      return x_BTD
    is_visual_BT = input_ids_BT == self.cfg.item(pixel_values.shape)[1]
    if slots_BT is not None:
      is_visual_BT = is_visual_BT & slots_BT.astype(bool)
    return layers.merge_visual(x_BTD, is_visual_BT,
                               self.visual_tokens(pixel_values, train, drop_key, remat))

  def prompt_positions(self, input_ids_BP, attention_mask_BP, pixel_values=None):
    """(positions [3, B, P], each row's next position [B], a static bound on it): the
    3-D rope index of prompts whose items share the frames' one grid
    (`mrope.grid_rope_index`); completions continue at next + 0, 1, ... in all rows."""
    cfg = self.cfg
    P = input_ids_BP.shape[1]
    if pixel_values is None:
      pos_BP = llm.positions_from_mask(attention_mask_BP)
      next_B = jnp.sum(jnp.asarray(attention_mask_BP).astype(jnp.int32), axis=1)
      return jnp.broadcast_to(pos_BP[None], (3, *pos_BP.shape)), next_B, P
    grid, token, seconds = cfg.item(pixel_values.shape)
    kw = dict(second_per_grid_t=seconds, spatial_merge_size=cfg.vision.spatial_merge_size,
              tokens_per_second=cfg.tokens_per_second)
    pos_3BP, next_B = mrope.grid_rope_index(input_ids_BP, attention_mask_BP, grid_thw=grid,
                                            token_id=token, **kw)
    items = P // max(1, int(np.prod(grid)) // cfg.vision.merge_unit)  # at most
    return pos_3BP, next_B, P + mrope.grid_position_slack(grid, items=items, **kw)

  # ---------------------------------------- transformers' processor outputs, any grids ---

  def packed_forward(self, input_ids_BT, attention_mask_BT, position_ids_3BT, images, videos):
    """Logits for packed patches: ``images``/``videos`` are None or (patches [P, C], plan)."""
    x_BTD = self.llm.embed_tokens(input_ids_BT)
    for item, token in ((images, self.cfg.image_token_id), (videos, self.cfg.video_token_id)):
      if item is not None:
        feats_MD = self.vision.encode(*item)
        x_BTD = layers.merge_visual(x_BTD, input_ids_BT == token, feats_MD)
    h_BTD, _ = self.llm(x_BTD, position_ids_3BT, layers.CausalMask(attention_mask_BT))
    return self.llm.logits(h_BTD)[..., :self.cfg.text.vocab_size]

  def __call__(self, input_ids, attention_mask=None, pixel_values_videos=None,
               video_grid_thw=None, second_per_grid_ts=None, pixel_values=None,
               image_grid_thw=None, position_ids=None) -> jax.Array:
    """Logits [B, T, V] (float32) from transformers' processor outputs, by its names; the
    3-D positions are `mrope.rope_index`'s (the Qwen reference's) unless ``position_ids``
    [3, B, T] are given. Grids and ids must be concrete (host arrays)."""
    cfg = self.cfg
    ids = np.asarray(input_ids)
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask)
    items = {}
    for name, px, grid, token in (("images", pixel_values, image_grid_thw, cfg.image_token_id),
                                  ("videos", pixel_values_videos, video_grid_thw,
                                   cfg.video_token_id)):
      if px is None:
        items[name] = None
        continue
      if grid is None:
        raise ValueError(f"{name}: pixel values given without their grid_thw")
      grid = np.asarray(grid).reshape(-1, 3)
      want = int(grid.prod(-1).sum()) // cfg.vision.merge_unit
      have = int(((ids == token) & mask.astype(bool)).sum())
      if want != have:
        raise ValueError(f"{name}: the grids give {want} tokens, input_ids hold {have} "
                         f"{'<|image_pad|>' if token == cfg.image_token_id else '<|video_pad|>'}")
      items[name] = (jnp.asarray(px), qwen_vision.make_plan(grid, cfg.vision))
    if position_ids is None:
      position_ids, _ = mrope.rope_index(
          ids, mask, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
          second_per_grid_ts=second_per_grid_ts, image_token_id=cfg.image_token_id,
          video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id,
          spatial_merge_size=cfg.vision.spatial_merge_size,
          tokens_per_second=cfg.tokens_per_second)
    return _jit_packed(self, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(position_ids),
                       items["images"], items["videos"])


@nnx.jit
def _jit_packed(m: Qwen25VL, ids, mask, positions, images, videos):
  return m.packed_forward(ids, mask, positions, images, videos)
