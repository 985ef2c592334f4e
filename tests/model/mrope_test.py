"""Qwen2.5-VL M-RoPE: `rope_index` against a plain loop restating the Qwen reference and
against transformers 5.x's `get_rope_index` (equal where the two rules agree; where they do
not, transformers equals the same loop with 5.x's rule for the text after a vision item);
`mrope_cos_sin` + `llm.rotate` against transformers' rotary embedding on random q, k."""

import numpy as np
import pytest

import tolerance
from vqathinker_jax.model import llm, mrope

IMG, VID, VS, VE = 250, 251, 252, 253  # image/video pad, vision start/end (tiny vocab)
M, TPS = 2, 2                          # spatial merge, tokens per second (checkpoint values)


def build(*parts, seed=0):
  """Token ids of a prompt: an int is that many text tokens, ("image", grid) or
  ("video", grid, s) is <|vision_start|>, its pad tokens, <|vision_end|>."""
  rng = np.random.default_rng(seed)
  ids, images, videos, seconds = [], [], [], []
  for part in parts:
    if isinstance(part, int):
      ids += rng.integers(0, 200, part).tolist()
      continue
    kind, grid = part[0], part[1]
    (images if kind == "image" else videos).append(grid)
    if kind == "video":
      seconds.append(part[2])
    ids += [VS] + [IMG if kind == "image" else VID] * (int(np.prod(grid)) // M ** 2) + [VE]
  return ids, images, videos, seconds


def batch(rows, pad_left=False):
  """Rows of `build` padded to one length: ids, mask, grids and seconds in batch order."""
  L = max(len(r[0]) for r in rows)
  ids = np.zeros((len(rows), L), np.int64)
  mask = np.zeros((len(rows), L), np.int64)
  for b, (row, *_) in enumerate(rows):
    sl = slice(L - len(row), L) if pad_left else slice(0, len(row))
    ids[b, sl], mask[b, sl] = row, 1
  cat = lambda i: [g for r in rows for g in r[i]]
  return ids, mask, cat(1), cat(2), cat(3)


def reference_loop(ids_BL, mask_BL, images, videos, seconds, *, transformers_5x=False):
  """The Qwen reference (`get_rope_index_25`, transformers 4.49), one token at a time.
  ``transformers_5x``: 5.x's rule instead: the text after an item starts at its start +
  max(h, w)/m, the delta takes the unmasked length, masked slots hold 0."""
  B, L = ids_BL.shape
  pos = np.full((3, B, L), 0 if transformers_5x else 1, np.int64)
  deltas = []
  images, videos = iter(images), iter(zip(videos, seconds))
  for b in range(B):
    toks = [int(ids_BL[b, i]) for i in range(L) if mask_BL[b, i]]
    out, cur, k = [], 0, 0
    while k < len(toks):
      if toks[k] in (IMG, VID) and k > 0 and toks[k - 1] == VS:
        if toks[k] == IMG:
          (t, h, w), s = next(images), None
        else:
          (t, h, w), s = next(videos)
        start = cur
        for ti in range(t):
          # float32 as HF's second_per_grid_ts tensor; images: t = 1, temporal id 0
          tt = ti if s is None else int(np.float32(ti) * np.float32(s) * np.float32(TPS))
          for hi in range(h // M):
            for wi in range(w // M):
              out.append((start + tt, start + hi, start + wi))
        n = t * (h // M) * (w // M)
        k += n
        cur = start + max(h, w) // M if transformers_5x else max(max(p) for p in out[-n:]) + 1
      else:
        out.append((cur, cur, cur))
        cur, k = cur + 1, k + 1
    valid = [i for i in range(L) if mask_BL[b, i]]
    for i, p in zip(valid, out):
      pos[:, b, i] = p
    deltas.append(max(max(p) for p in out) + 1 - (len(toks) if transformers_5x else L))
  return pos, np.array(deltas)


def ours(ids, mask, images, videos, seconds):
  return mrope.rope_index(
      ids, mask, image_grid_thw=np.array(images).reshape(-1, 3) if images else None,
      video_grid_thw=np.array(videos).reshape(-1, 3) if videos else None,
      second_per_grid_ts=seconds or None, image_token_id=IMG, video_token_id=VID,
      vision_start_token_id=VS, spatial_merge_size=M, tokens_per_second=TPS)


@pytest.fixture(scope="module")
def hf_model():
  import torch
  from transformers import Qwen2_5_VLConfig
  from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
  torch.manual_seed(0)
  cfg = Qwen2_5_VLConfig(
      text_config=dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                       rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
      vision_config=dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2,
                         out_hidden_size=64, spatial_merge_size=M, window_size=56,
                         fullatt_block_indexes=[0], tokens_per_second=TPS),
      image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS,
      vision_end_token_id=VE)
  return Qwen2_5_VLModel(cfg).eval()


def hf_index(model, ids, mask, images, videos, seconds):
  """transformers 5.x's `get_rope_index` (it needs `mm_token_type_ids`: 1 image, 2 video)."""
  import torch
  types = np.where(ids == IMG, 1, np.where(ids == VID, 2, 0))
  with torch.no_grad():
    pos, deltas = model.get_rope_index(
        torch.tensor(ids), mm_token_type_ids=torch.tensor(types),
        image_grid_thw=torch.tensor(images).reshape(-1, 3) if images else None,
        video_grid_thw=torch.tensor(videos).reshape(-1, 3) if videos else None,
        # float32, as the processor's BatchFeature carries it
        second_per_grid_ts=torch.tensor(seconds, dtype=torch.float32) if seconds else None,
        attention_mask=torch.tensor(mask))
  return pos.numpy(), deltas.numpy().reshape(-1)


CASES = {
    "text_only": [build(12)],
    "one_image": [build(5, ("image", (1, 4, 6)), 7)],
    "video_s1": [build(3, ("video", (3, 8, 12), 1.0), 4)],
    "video_s0.999": [build(3, ("video", (4, 8, 12), 0.999), 4)],
    "video_s1.333": [build(3, ("video", (3, 8, 12), 1.333), 4)],
    "image_and_video": [build(4, ("image", (1, 6, 4)), 3, ("video", (4, 6, 18), 1.333), 5)],
    "image_and_longer_video": [build(4, ("image", (1, 6, 4)), 3, ("video", (4, 6, 10), 1.333),
                                     5)],
    "video_many_grids": [build(2, ("video", (8, 4, 4), 1.0), 3)],
    "video_s0.7_float32": [build(1, ("video", (48, 2, 2), 0.7), 2)],
    "two_videos_two_images": [build(2, ("video", (2, 4, 4), 2.0), ("image", (1, 2, 2)), 1,
                                    ("video", (3, 4, 6), 0.5), ("image", (1, 4, 2)), 2)],
    "batch_right_padded": [build(3, ("video", (2, 4, 6), 1.0), 2, seed=1),
                           build(2, ("image", (1, 4, 4)), 6, seed=2)],
}


@pytest.mark.parametrize("name", CASES)
def test_rope_index_matches_reference_and_transformers(name, hf_model):
  ids, mask, images, videos, seconds = batch(CASES[name])
  pos, deltas = ours(ids, mask, images, videos, seconds)
  ref_pos, ref_deltas = reference_loop(ids, mask, images, videos, seconds)
  np.testing.assert_array_equal(pos, ref_pos)
  np.testing.assert_array_equal(deltas, ref_deltas)
  assert pos.dtype == deltas.dtype == np.int32

  # transformers 5.x is exactly the loop with its rule for the text after an item ...
  hf_pos, hf_deltas = hf_index(hf_model, ids, mask, images, videos, seconds)
  q_pos, q_deltas = reference_loop(ids, mask, images, videos, seconds, transformers_5x=True)
  np.testing.assert_array_equal(hf_pos, q_pos)
  np.testing.assert_array_equal(hf_deltas, q_deltas)
  # ... which gives the reference's positions iff every video has t_max < max(h, w)/m
  # (or no text follows it); its delta takes the unmasked length instead of L.
  valid = mask.astype(bool)
  agree = all(int(np.float32(t - 1) * np.float32(s) * TPS) < max(h, w) // M
              for (t, h, w), s in zip(videos, seconds))
  assert np.array_equal(hf_pos[:, valid], pos[:, valid]) == agree, name
  if agree:
    np.testing.assert_array_equal(deltas, hf_deltas - (mask.shape[1] - mask.sum(1)))


def test_transformers_5x_quirk_worked_example(hf_model):
  """Spec §3.3: grid (8, 4, 4), s = 1 after 2 tokens: the video's t-ids reach 16; the text
  after it is 17, 18, 19 in the reference and 4, 5, 6 in transformers 5.x (delta -17/-20)."""
  ids, mask, *grids = batch([build(1, ("video", (8, 4, 4), 1.0), 2)])
  pos, deltas = ours(ids, mask, *grids)
  hf_pos, hf_deltas = hf_index(hf_model, ids, mask, *grids)
  assert ids.shape[1] == 37 and pos[0, 0, 2:34].max() == 16
  np.testing.assert_array_equal(pos[:, 0, 34:], [[17, 18, 19]] * 3)
  np.testing.assert_array_equal(hf_pos[:, 0, 34:], [[4, 5, 6]] * 3)
  np.testing.assert_array_equal(hf_pos[:, :, :34], pos[:, :, :34])  # up to the text after
  assert deltas.tolist() == [-17] and hf_deltas.tolist() == [-20]


def test_temporal_ids_floor_in_float32():
  """s = 0.7, grid i = 45: 45·0.7·2 is 63 in float32 (HF's tensor), 62.99… in float64."""
  t_row = mrope.vision_positions((48, 2, 2), start=0, second_per_grid_t=0.7)[0]
  assert t_row[45] == 63 and int(45 * 0.7 * 2) == 62
  s_row = mrope.vision_positions((4, 8, 12), start=0, second_per_grid_t=0.999)[0]
  assert sorted(set(s_row.tolist())) == [0, 1, 3, 5]  # 4.50-4.57 collapse these to 0


def test_left_padding_and_masked_slots():
  rows = [build(3, ("video", (2, 4, 6), 1.333), 2, seed=3), build(2, seed=4)]
  ids, mask, images, videos, seconds = batch(rows, pad_left=True)
  pos, deltas = ours(ids, mask, images, videos, seconds)
  ref_pos, ref_deltas = reference_loop(ids, mask, images, videos, seconds)
  np.testing.assert_array_equal(pos, ref_pos)
  np.testing.assert_array_equal(deltas, ref_deltas)
  assert (pos[:, ~mask.astype(bool)] == 1).all()
  # Row 1 is 2 text tokens at the end of L slots: positions 0, 1; next token (index L) at 2.
  assert deltas[1] == 2 - ids.shape[1]


def test_decode_positions_continue_after_the_prompt():
  rows = [build(3, ("video", (4, 4, 4), 1.0), 1, seed=5), build(4, ("image", (1, 4, 4)), 2)]
  ids, mask, *grids = batch(rows)
  pos, deltas = ours(ids, mask, *grids)
  L, steps = ids.shape[1], 3
  got = np.asarray(mrope.decode_positions(deltas, np.broadcast_to(L + np.arange(steps), (2, 3))))
  want = pos.max(axis=(0, 2), where=mask.astype(bool)[None], initial=0)[:, None] + 1 + np.arange(3)
  np.testing.assert_array_equal(got, want)


def test_malformed_prompts_raise():
  ids, mask, images, *_ = batch([build(2, ("image", (1, 4, 4)), 2)])
  kw = dict(image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS)
  with pytest.raises(ValueError, match="pad tokens for grid"):
    mrope.rope_index(ids, mask, image_grid_thw=[[1, 4, 6]], **kw)
  with pytest.raises(ValueError, match="than grids"):
    mrope.rope_index(ids, mask, **kw)
  with pytest.raises(ValueError, match="more image grids"):
    mrope.rope_index(ids, mask, image_grid_thw=[[1, 4, 4], [1, 2, 2]], **kw)
  stray = ids.copy()
  stray[0, 0] = IMG
  with pytest.raises(ValueError, match="outside any item"):
    mrope.rope_index(stray, mask, image_grid_thw=images, **kw)


# ---- cos / sin --------------------------------------------------------------------------

def classic_mrope(q_BHLE, pos_3BL, theta, section):
  """float64 restatement of the classic `apply_multimodal_rotary_pos_emb`: per-row cos/sin
  [3, B, L, E], split along E into ``section * 2`` chunks, chunk i from row i % 3."""
  E = q_BHLE.shape[-1]
  inv = 1.0 / theta ** (np.arange(0, E, 2, dtype=np.float64) / E)
  f = pos_3BL[..., None].astype(np.float64) * inv
  emb = np.concatenate([f, f], -1)
  bounds = np.cumsum(list(section) * 2)[:-1]
  pick = lambda t: np.concatenate(
      [c[i % 3] for i, c in enumerate(np.split(t, bounds, axis=-1))], -1)[:, None]
  cos, sin = pick(np.cos(emb)), pick(np.sin(emb))
  half = np.concatenate([-q_BHLE[..., E // 2:], q_BHLE[..., :E // 2]], -1)
  return q_BHLE * cos + half * sin


@pytest.mark.parametrize("head_dim, section, theta", [(128, (16, 24, 24), 1e6),
                                                      (16, (2, 3, 3), 1e6),
                                                      (64, (8, 12, 12), 1e4)])
def test_mrope_rotation_matches_transformers(head_dim, section, theta):
  import torch
  from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf
  from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
  rng = np.random.default_rng(0)
  # Positions of a real prompt (image + video + text) next to random 3-D ones.
  ids, mask, *grids = batch([build(4, ("image", (1, 6, 4)), 3, ("video", (4, 6, 10), 1.333), 5),
                             build(30)])
  pos_3BL = np.concatenate([ours(ids, mask, *grids)[0],
                            rng.integers(0, 3000, (3, 2, ids.shape[1]))], axis=1)
  B, L, H = pos_3BL.shape[1], pos_3BL.shape[2], 3
  q = rng.standard_normal((B, L, H, head_dim)).astype(np.float32)
  k = rng.standard_normal((B, L, H, head_dim)).astype(np.float32)

  cos, sin = mrope.mrope_cos_sin(pos_3BL, head_dim, theta, section)
  got_q, got_k = (np.asarray(llm.rotate(x, cos, sin)) for x in (q, k))

  cfg = Qwen2_5_VLTextConfig(hidden_size=H * head_dim, num_attention_heads=H,
                             num_key_value_heads=H, rope_parameters={
                                 "rope_type": "default", "rope_theta": theta,
                                 "mrope_section": list(section)})
  qt, kt = (torch.tensor(x).transpose(1, 2) for x in (q, k))  # [B, H, L, E]
  pt = torch.tensor(pos_3BL, dtype=torch.long)
  if hasattr(hf, "apply_multimodal_rotary_pos_emb"):  # transformers 4.x
    c, s = hf.Qwen2_5_VLRotaryEmbedding(cfg)(qt, pt)
    want_q, want_k = hf.apply_multimodal_rotary_pos_emb(qt, kt, c, s, list(section))
  else:  # 5.x: the rotary embedding recomposes the sections, then the plain RoPE
    c, s = hf.Qwen2_5_VLRotaryEmbedding(cfg)(qt, pt)
    want_q, want_k = hf.apply_rotary_pos_emb(qt, kt, c, s)
  want_q, want_k = (w.transpose(1, 2).numpy() for w in (want_q, want_k))
  np.testing.assert_array_equal(np.asarray(cos).shape, (B, L, head_dim))

  # Angles up to ~3000 rad: float32 rounding of pos·inv_freq (and of inv_freq itself,
  # torch's pow against XLA's) moves them by ~eps·angle, so the scale is |q|·max angle.
  scale = lambda x: np.abs(x).max() * (1 + pos_3BL.max())
  tolerance.assert_close(got_q, want_q, 4, scale=scale(q), name="q vs transformers")
  tolerance.assert_close(got_k, want_k, 4, scale=scale(k), name="k vs transformers")
  ref_q = classic_mrope(q.astype(np.float64).transpose(0, 2, 1, 3), pos_3BL, theta, section)
  tolerance.assert_close(got_q, ref_q.transpose(0, 2, 1, 3), 4, scale=scale(q),
                         name="q vs float64 classic layout")


def test_text_positions_reduce_to_1d_rope():
  """Equal rows (text, decoding): M-RoPE's tables are `llm.rope_cos_sin`'s, bit for bit."""
  p_BL = np.arange(40).reshape(2, 20) * 37
  cos, sin = mrope.mrope_cos_sin(np.broadcast_to(p_BL, (3, 2, 20)), 128, 1e6)
  cos1, sin1 = llm.rope_cos_sin(p_BL, 128, 1e6)
  np.testing.assert_array_equal(np.asarray(cos), np.asarray(cos1))
  np.testing.assert_array_equal(np.asarray(sin), np.asarray(sin1))


def test_bad_section_raises():
  with pytest.raises(ValueError, match="must sum"):
    mrope.mrope_cos_sin(np.zeros((3, 1, 2), np.int32), 128, 1e6, (16, 24, 16))
