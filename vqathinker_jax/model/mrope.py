"""Qwen2.5-VL's multimodal RoPE (M-RoPE): 3-D positions and their cos/sin.

`rope_index` (host numpy: the grids are static per batch) gives every token a (t, h, w)
position, the Qwen reference semantics (QwenLM/Qwen2.5-VL; transformers 5.x places text after a
video differently, see tests/model/mrope_test.py); text tokens
have t = h = w, so for them M-RoPE is the ordinary 1-D RoPE of `llm.rope_cos_sin`, which is
what decoding uses (`decode_positions`). `mrope_cos_sin` turns the 3-D positions into cos
and sin in `llm.rotate`'s half-split layout.
Legend: B batch, L tokens (padded), T query tokens, E head dim, F = E/2 frequencies,
N vision items, 3 the (t, h, w) rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

MROPE_SECTION = (16, 24, 24)  # frequencies given to t, h, w (sums to E/2 = 64 for E = 128)


def vision_positions(grid_thw: Sequence[int], *, start: int, second_per_grid_t: float | None,
                     spatial_merge_size: int = 2, tokens_per_second: int = 2) -> np.ndarray:
  """[3, t·(h/m)·(w/m)] positions of one image or video's merged tokens, (t, row, col)
  raster order (the merger's output order), offset by ``start``.

  Videos: t-row = floor(i · second_per_grid_t · tokens_per_second), computed in float32
  because HF and Qwen carry ``second_per_grid_ts`` as a float32 tensor, and at integer
  boundaries the floor depends on it (s = 0.7, i = 45: 63 in float32, 62 in float64).
  Images (``second_per_grid_t`` None): t = 1, so the t-row is 0.
  """
  t, h, w = (int(v) for v in grid_thw)
  lh, lw = h // spatial_merge_size, w // spatial_merge_size
  if second_per_grid_t is None:
    tt = np.arange(t)
  else:
    tt = np.floor(np.arange(t, dtype=np.float32) * np.float32(second_per_grid_t)
                  * np.float32(tokens_per_second)).astype(np.int64)
  pos_3THW = np.stack(np.broadcast_arrays(tt[:, None, None], np.arange(lh)[None, :, None],
                                          np.arange(lw)[None, None, :]))
  return pos_3THW.reshape(3, -1) + start


def rope_index(input_ids_BL, attention_mask_BL=None, *, image_grid_thw=None,
               video_grid_thw=None, second_per_grid_ts=None, image_token_id: int,
               video_token_id: int, vision_start_token_id: int, spatial_merge_size: int = 2,
               tokens_per_second: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """3-D positions [3, B, L] and rope deltas [B] (both int32), Qwen reference semantics.

  Per row, over its unmasked tokens only (any padding side): text counts on from the
  running position; a vision item (the <|image_pad|>/<|video_pad|> run that follows a
  <|vision_start|>, its length t·h·w/m² from the next grid of its kind) gets
  `vision_positions` from the running position, and the text after it starts at the max
  over all three rows + 1. Grids and ``second_per_grid_ts`` (per video, default 1.0) are
  consumed in batch order. Masked slots hold 1 (as the reference; they are never read).
  ``rope_delta = max position + 1 - L``: the token at padded index p >= L (decoding after
  the whole padded prompt block) has position p + delta in all three rows.

  Not transformers 5.x's `get_rope_index`, which starts the text after a vision item at
  start + max(h, w)/m (ignoring t) and takes L as the unmasked length; nor 4.50-4.57's,
  which truncates ``second_per_grid_t`` to an integer first (spec §3.3).
  """
  ids_BL = np.asarray(input_ids_BL)
  B, L = ids_BL.shape
  mask_BL = (np.ones((B, L), bool) if attention_mask_BL is None
             else np.asarray(attention_mask_BL).astype(bool))
  grids = {image_token_id: iter(np.zeros((0, 3), np.int64) if image_grid_thw is None
                                else np.asarray(image_grid_thw).reshape(-1, 3)),
           video_token_id: iter(np.zeros((0, 3), np.int64) if video_grid_thw is None
                                else np.asarray(video_grid_thw).reshape(-1, 3))}
  n_videos = 0 if video_grid_thw is None else np.asarray(video_grid_thw).reshape(-1, 3).shape[0]
  seconds = iter([1.0] * n_videos if second_per_grid_ts is None
                 else np.asarray(second_per_grid_ts, np.float64).reshape(-1).tolist())
  m2 = spatial_merge_size ** 2
  pos_3BL = np.ones((3, B, L), np.int64)
  delta_B = np.zeros((B,), np.int64)
  for b in range(B):
    ids = ids_BL[b][mask_BL[b]]
    n = ids.shape[0]
    pos_3n = np.empty((3, n), np.int64)
    # A vision item starts right after a <|vision_start|> (the reference's rule).
    starts = np.flatnonzero(ids[:-1] == vision_start_token_id) + 1
    starts = starts[np.isin(ids[starts], (image_token_id, video_token_id))]
    cur, done, spanned = 0, 0, 0  # next position; tokens placed; pad tokens in items
    for st in starts:
      if st < done:
        raise ValueError(f"row {b}: vision item at token {st} starts inside the previous one")
      pos_3n[:, done:st] = np.arange(st - done) + cur
      cur += st - done
      kind = int(ids[st])
      try:
        grid = next(grids[kind])
      except StopIteration:
        raise ValueError(f"row {b}: more {'video' if kind == video_token_id else 'image'} "
                         "items in the prompt than grids") from None
      span = int(np.prod(grid)) // m2
      if st + span > n or not np.all(ids[st:st + span] == kind):
        raise ValueError(f"row {b}: the item at token {st} needs {span} pad tokens for grid "
                         f"{tuple(int(g) for g in grid)}")
      s = None
      if kind == video_token_id and (s := next(seconds, None)) is None:
        raise ValueError("fewer second_per_grid_ts than video grids")
      pos_3n[:, st:st + span] = vision_positions(
          grid, start=cur, second_per_grid_t=s, spatial_merge_size=spatial_merge_size,
          tokens_per_second=tokens_per_second)
      cur = int(pos_3n[:, st:st + span].max()) + 1
      done, spanned = st + span, spanned + span
    pos_3n[:, done:] = np.arange(n - done) + cur
    stray = int(np.isin(ids, (image_token_id, video_token_id)).sum()) - spanned
    if stray:
      raise ValueError(f"row {b}: {stray} image/video pad tokens outside any item (each item "
                       "must follow a <|vision_start|>)")
    pos_3BL[:, b, mask_BL[b]] = pos_3n
    delta_B[b] = (pos_3n.max() if n else -1) + 1 - L
  for kind, it in grids.items():
    if next(it, None) is not None:
      raise ValueError(f"more {'video' if kind == video_token_id else 'image'} grids than "
                       "items in the prompts")
  return pos_3BL.astype(np.int32), delta_B.astype(np.int32)


def decode_positions(rope_deltas_B, index_BT) -> jax.Array:
  """Positions [B, T] of tokens at padded indices ``index_BT`` (>= the prompt block's L):
  ``index + rope_delta``, the same in the three rows, so the step-th generated token sits
  at its prompt's max position + 1 + step. Their cos/sin are `llm.rope_cos_sin`'s (equal to
  `mrope_cos_sin` of the 3-row broadcast): the 1-D rope table serves decoding unchanged."""
  return jnp.asarray(index_BT) + jnp.asarray(rope_deltas_B)[:, None]


def mrope_cos_sin(position_ids_3BL, head_dim: int, theta: float,
                  mrope_section: Sequence[int] = MROPE_SECTION):
  """cos and sin [B, L, E] (float32) for `llm.rotate`, from positions [3, B, L].

  Frequency j (of F = E/2) takes its angle from row t, h or w by section (the first 16 from
  t, the next 24 from h, the last 24 from w, for (16, 24, 24)), and the two halves of E
  repeat the F angles, as transformers' Qwen2.5-VL (`mrope_section * 2` over E). Not the
  interleaved assignment of Qwen3-VL.
  """
  if sum(mrope_section) != head_dim // 2:
    raise ValueError(f"mrope_section {tuple(mrope_section)} must sum to head_dim/2 = "
                     f"{head_dim // 2}")
  inv_freq_F = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  row_F = np.repeat(np.arange(3), mrope_section)  # static: which row each frequency reads
  pos_BLF = jnp.moveaxis(jnp.asarray(position_ids_3BL)[row_F], 0, -1).astype(jnp.float32)
  # Same product as `llm.rope_cos_sin`, so text tokens get bit-identical tables.
  freqs_BLF = pos_BLF * inv_freq_F
  freqs_BLE = jnp.concatenate([freqs_BLF, freqs_BLF], -1)
  return jnp.cos(freqs_BLE), jnp.sin(freqs_BLE)


def grid_rope_index(input_ids_BL, attention_mask_BL, *, grid_thw: Sequence[int],
                    second_per_grid_t: float | None, token_id: int, spatial_merge_size: int = 2,
                    tokens_per_second: int = 2):
  """`rope_index` under `jit`, for prompts whose vision items are all of one kind and one
  static grid (our pipeline: every clip has the same frame count and size): positions
  [3, B, L] and, per row, the next position (its max + 1, where decoding starts) [B], int32.

  ``token_id``: the items' pad token (<|video_pad|>; <|image_pad|> with
  ``second_per_grid_t`` None). Each run of `grid`-sized blocks of it is one item (the
  prompt template puts each after a <|vision_start|>). With n the token's index among its row's unmasked tokens, c
  the pad tokens up to and including it, S = t·h·w/m² and W = the item's extent + 1
  (max of `vision_positions` + 1): a text token sits at n - c + (c / S)·W; the r-th pad
  token of item j at its item's start (n - r) - j·S + j·W, plus `vision_positions`' r-th
  column. Masked slots hold 1, as in `rope_index`.
  """
  table_3S = vision_positions(grid_thw, start=0, second_per_grid_t=second_per_grid_t,
                              spatial_merge_size=spatial_merge_size,
                              tokens_per_second=tokens_per_second)
  S, W = table_3S.shape[1], int(table_3S.max()) + 1
  valid_BL = jnp.asarray(attention_mask_BL).astype(bool)
  n_BL = jnp.cumsum(valid_BL, axis=1, dtype=jnp.int32) - 1
  pad_BL = (jnp.asarray(input_ids_BL) == token_id) & valid_BL
  c_BL = jnp.cumsum(pad_BL, axis=1, dtype=jnp.int32)
  text_BL = n_BL - c_BL + (c_BL // S) * W
  k_BL = jnp.maximum(c_BL - 1, 0)
  j_BL, r_BL = k_BL // S, k_BL % S
  start_BL = (n_BL - r_BL) - j_BL * S + j_BL * W
  vis_3BL = start_BL[None] + jnp.asarray(table_3S, jnp.int32)[:, r_BL]
  pos_3BL = jnp.where(pad_BL[None], vis_3BL, text_BL[None])
  pos_3BL = jnp.where(valid_BL[None], pos_3BL, 1)
  next_B = jnp.max(jnp.where(valid_BL[None], pos_3BL, -1), axis=(0, 2)) + 1
  return pos_3BL.astype(jnp.int32), next_B.astype(jnp.int32)


def grid_position_slack(grid_thw: Sequence[int], second_per_grid_t: float | None, items: int, *,
                        spatial_merge_size: int = 2, tokens_per_second: int = 2) -> int:
  """How far past its length L a prompt with ``items`` such videos can place its next
  position (`grid_rope_index`'s next - L, at most): 0 when each item's extent is at
  most its token count (real frames), else the excess (a video of few tokens a grid)."""
  table_3S = vision_positions(grid_thw, start=0, second_per_grid_t=second_per_grid_t,
                              spatial_merge_size=spatial_merge_size,
                              tokens_per_second=tokens_per_second)
  return items * max(0, int(table_3S.max()) + 1 - table_3S.shape[1])
