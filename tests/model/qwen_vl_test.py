"""Qwen2.5-VL against transformers' `Qwen2_5_VLForConditionalGeneration` on a tiny random
config (float32): logits for images, one video, two videos of different sizes right-padded,
partial windows and several temporal grids; our pipeline's frames path against the
processor's patches; greedy decoding against `generate`; export and reload both ways."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_tiny
import tolerance
from vqathinker_jax import model
from vqathinker_jax.model import mrope, qwen_inputs, qwen_vl
from vqathinker_jax.rl import rollout

IMG, VID, VSTART, VEND = 250, 251, 252, 253
# XLA against torch through 4 vision blocks, the merger and 2 decoder layers, each summing
# in its own order (units of float32 eps at the logits' scale; 1e-4 of it is 839).
LOGITS_VS_TORCH = 200


def hf_config(tied: bool = False):
  from transformers import Qwen2_5_VLConfig
  return Qwen2_5_VLConfig(
      text_config=dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       rms_norm_eps=1e-6, max_position_embeddings=4096, rope_theta=1e6,
                       rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                       tie_word_embeddings=tied),
      vision_config=dict(depth=4, hidden_size=32, intermediate_size=48, num_heads=2,
                         out_hidden_size=64, patch_size=14, temporal_patch_size=2,
                         spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1, 3],
                         tokens_per_second=2, in_channels=3),
      image_token_id=IMG, video_token_id=VID, vision_start_token_id=VSTART,
      vision_end_token_id=VEND, tie_word_embeddings=tied)


def make_hf(tied: bool = False, seed: int = 0):
  """The tiny model with every parameter re-drawn (`hf_tiny.redraw_`)."""
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration
  torch.manual_seed(seed)
  m = Qwen2_5_VLForConditionalGeneration._from_config(hf_config(tied),
                                                      attn_implementation="eager")
  return hf_tiny.redraw_(m, seed).eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("qwen25vl")
  hf = make_hf()
  hf.save_pretrained(path)
  return path, hf


@pytest.fixture(scope="module")
def ours(hf_dir):
  m, cfg = model.from_pretrained(hf_dir[0])
  return m, cfg


def prompt(items, rng, text=(3, 2)):
  """Token ids: text, then per item <|vision_start|> pads <|vision_end|> text."""
  ids = list(rng.integers(0, 200, text[0]))
  for token, grid in items:
    ids += [VSTART] + [token] * (int(np.prod(grid)) // 4) + [VEND]
    ids += list(rng.integers(0, 200, text[1]))
  return ids


def batch(rows):
  """Right-padded ids and mask from lists of ids."""
  L = max(map(len, rows))
  ids = np.zeros((len(rows), L), np.int64)
  mask = np.zeros((len(rows), L), np.int64)
  for b, r in enumerate(rows):
    ids[b, :len(r)], mask[b, :len(r)] = r, 1
  return ids, mask


def hf_logits(hf, ids, mask, positions, **pix):
  import torch
  kw = {k: torch.as_tensor(np.asarray(v)) for k, v in pix.items() if v is not None}
  with torch.no_grad():
    out = hf(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
             position_ids=torch.as_tensor(np.asarray(positions, np.int64)), **kw)
  return out.logits.numpy()


CASES = {
    # name: per row, [(kind, grid)]; seconds per grid for the videos in batch order
    "images": ([[("image", (1, 6, 10)), ("image", (1, 4, 4))]], None),
    "one_video": ([[("video", (2, 8, 8))]], [1.0]),
    "two_videos_padded": ([[("video", (2, 6, 10))], [("video", (1, 4, 4))]], [1.333, 0.5]),
    "partial_windows_3_grids": ([[("video", (3, 10, 14))]], [2.0]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, hf_dir, ours):
  m, _ = ours
  rows_items, seconds = CASES[case]
  rng = np.random.default_rng(0)
  token = {"image": IMG, "video": VID}
  rows = [prompt([(token[k], g) for k, g in items], rng) for items in rows_items]
  ids, mask = batch(rows)
  grids = {k: [g for items in rows_items for kk, g in items if kk == k] or None
           for k in ("image", "video")}
  px = {k: (None if grids[k] is None else rng.standard_normal(
      (int(np.prod(grids[k], axis=1).sum()), 3 * 2 * 14 * 14)).astype(np.float32))
      for k in grids}
  pos, _ = mrope.rope_index(ids, mask, image_grid_thw=grids["image"],
                            video_grid_thw=grids["video"], second_per_grid_ts=seconds,
                            image_token_id=IMG, video_token_id=VID, vision_start_token_id=VSTART)
  got = m(input_ids=ids, attention_mask=mask, pixel_values=px["image"],
          image_grid_thw=grids["image"], pixel_values_videos=px["video"],
          video_grid_thw=grids["video"], second_per_grid_ts=seconds)
  want = hf_logits(hf_dir[1], ids, mask, pos, pixel_values=px["image"],
                   image_grid_thw=grids["image"], pixel_values_videos=px["video"],
                   video_grid_thw=grids["video"], second_per_grid_ts=seconds)
  valid = mask.astype(bool)
  tolerance.assert_close(np.asarray(got)[valid], want[valid], LOGITS_VS_TORCH, name=case)


def frames_and_patches(B, T, H, W, seed=0):
  """Normalised frames [B, T, H, W, 3] and the processor's patches of them."""
  frames = np.random.default_rng(seed).standard_normal((B, T, H, W, 3)).astype(np.float32)
  patches = np.concatenate([np.asarray(qwen_inputs.patchify_video(f)[0]) for f in frames])
  return frames, patches


def test_frames_path_matches_processor_patches(hf_dir, ours):
  """`forward` on frames [B, T, H, W, 3] (patchified on device, one grid, 3-D positions
  computed under jit) equals transformers on the same clips' processor patches."""
  m, cfg = ours
  B, T, H, W = 2, 4, 56, 84
  grid = cfg.video_grid(T, H, W)
  rng = np.random.default_rng(1)
  ids, mask = batch([prompt([(VID, grid)], rng, (4, 3)), prompt([(VID, grid)], rng, (2, 1))])
  frames, patches = frames_and_patches(B, T, H, W)
  pos, _ = mrope.rope_index(ids, mask, video_grid_thw=[grid] * B,
                            second_per_grid_ts=[cfg.second_per_grid_t] * B, image_token_id=IMG,
                            video_token_id=VID, vision_start_token_id=VSTART)
  got_pos, _, _ = m.prompt_positions(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(frames))
  assert (np.asarray(got_pos)[:, mask.astype(bool)] == pos[:, mask.astype(bool)]).all()
  got = np.asarray(m.forward(jnp.asarray(ids), jnp.asarray(frames), jnp.asarray(mask)))
  want = hf_logits(hf_dir[1], ids, mask, pos, pixel_values_videos=patches,
                   video_grid_thw=[grid] * B, second_per_grid_ts=[cfg.second_per_grid_t] * B)
  valid = mask.astype(bool)
  tolerance.assert_close(got[valid], want[valid], LOGITS_VS_TORCH, name="frames path")


def test_greedy_decoding_matches_generate(hf_dir, ours):
  """Our rollout (prefill once, M-RoPE positions continuing from each prompt's max + 1)
  picks transformers' `generate` tokens, for a batch of two right-padded prompts. The
  clip's temporal extent is under its spatial one, where transformers 5.x's rope index
  agrees with the reference's (`mrope` docstring)."""
  import torch
  m, cfg = ours
  hf = hf_dir[1]
  B, T, H, W, C = 2, 4, 112, 112, 8
  grid = cfg.video_grid(T, H, W)
  rng = np.random.default_rng(2)
  rows = [prompt([(VID, grid)], rng, (3, 2)), prompt([(VID, grid)], rng, (1, 1))]
  frames, patches = frames_and_patches(B, T, H, W, seed=3)
  out = rollout.generate(m, jnp.asarray(batch(rows)[0]), jnp.asarray(batch(rows)[1]),
                         jnp.asarray(frames), rng=jax.random.key(0), max_new_tokens=C,
                         greedy=True, stop_ids=())
  got = np.asarray(out["tokens_NC"])
  got_logp = np.asarray(out["logprobs_NC"])
  per_video = np.split(patches, B)
  for b, row in enumerate(rows):  # one prompt at a time: transformers pads on the left
    ids = torch.as_tensor([row])
    types = torch.as_tensor([[2 if t == VID else 0 for t in row]])
    with torch.no_grad():
      seq = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                        pixel_values_videos=torch.as_tensor(per_video[b]),
                        video_grid_thw=torch.as_tensor([grid]),
                        second_per_grid_ts=torch.as_tensor([cfg.second_per_grid_t]),
                        mm_token_type_ids=types, max_new_tokens=C, do_sample=False,
                        min_new_tokens=C, eos_token_id=None, pad_token_id=0,
                        return_dict_in_generate=True, output_logits=True)
    assert got[b].tolist() == seq.sequences[0, len(row):].tolist(), b
    # The chosen tokens' log-probs too: the argmax of a tiny random model can survive a
    # wrong position, its probabilities cannot.
    logp = torch.log_softmax(torch.cat(seq.logits), -1).numpy()
    want = logp[np.arange(C), got[b]]
    tolerance.assert_close(got_logp[b], want, LOGITS_VS_TORCH, scale=np.abs(logp).max(),
                           name=f"log-probs {b}")


def test_export_round_trip(hf_dir, ours, tmp_path):
  """Our export opens in transformers with equal logits, and reloads here bit-identically."""
  from transformers import Qwen2_5_VLForConditionalGeneration
  m, cfg = ours
  model.save_pretrained(m, cfg, tmp_path / "out")
  hf2 = Qwen2_5_VLForConditionalGeneration.from_pretrained(
      tmp_path / "out", attn_implementation="eager").eval()
  rng = np.random.default_rng(4)
  grid = (2, 6, 10)
  ids, mask = batch([prompt([(VID, grid)], rng)])
  px = rng.standard_normal((int(np.prod(grid)), 1176)).astype(np.float32)
  pos, _ = mrope.rope_index(ids, mask, video_grid_thw=[grid], second_per_grid_ts=[1.0],
                            image_token_id=IMG, video_token_id=VID, vision_start_token_id=VSTART)
  kw = dict(pixel_values_videos=px, video_grid_thw=[grid], second_per_grid_ts=[1.0])
  want = hf_logits(hf_dir[1], ids, mask, pos, **kw)
  assert np.array_equal(hf_logits(hf2, ids, mask, pos, **kw), want)
  m2, cfg2 = model.from_pretrained(tmp_path / "out")
  assert cfg2 == cfg
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                   jax.tree.leaves(m2), jax.tree.leaves(m)))


def test_tied_checkpoint_loads_and_exports(tmp_path):
  """The 3B layout: a tied head, no `lm_head.weight` on disk; export keeps it tied."""
  hf = make_hf(tied=True, seed=5)
  hf.save_pretrained(tmp_path / "in")
  from safetensors import safe_open
  with safe_open(str(tmp_path / "in" / "model.safetensors"), "np") as f:
    assert not any(k.endswith("lm_head.weight") for k in f.keys())
  m, cfg = model.from_pretrained(tmp_path / "in")
  assert cfg.text.tie_word_embeddings and m.llm.lm_head is None
  rng = np.random.default_rng(6)
  ids, mask = batch([prompt([], rng, (9, 0))])
  pos = np.broadcast_to(np.arange(ids.shape[1]), (3, 1, ids.shape[1]))
  tolerance.assert_close(np.asarray(m(input_ids=ids, attention_mask=mask))[0],
                         hf_logits(hf, ids, mask, pos)[0], LOGITS_VS_TORCH, name="tied")
  model.save_pretrained(m, cfg, tmp_path / "out")
  written = json.loads((tmp_path / "out" / "config.json").read_text())
  assert written["tie_word_embeddings"] and written["model_type"] == "qwen2_5_vl"


def test_bad_inputs_name_the_problem(ours):
  m, cfg = ours
  ids, mask = batch([[1, VSTART] + [VID] * 3 + [VEND]])
  with pytest.raises(ValueError, match="the grids give 6 tokens, input_ids hold 3"):
    m(input_ids=ids, attention_mask=mask, pixel_values_videos=np.zeros((24, 1176), np.float32),
      video_grid_thw=[(2, 2, 6)], second_per_grid_ts=[1.0])
  frames = jnp.zeros((1, 2, 56, 50, 3))
  with pytest.raises(ValueError, match="multiple of 28"):
    qwen_vl.check_inputs(cfg, ids, frames)
  with pytest.raises(ValueError, match="holds 3 <\\|video_pad\\|> slots, but its 2 frames"):
    qwen_vl.check_inputs(cfg, ids, jnp.zeros((1, 2, 56, 56, 3)))
