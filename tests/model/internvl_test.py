"""Logits parity of `vqathinker_jax.model` against transformers' InternVL on tiny random
checkpoints, plus bfloat16 and input validation."""

import jax.numpy as jnp
import numpy as np
import pytest

import tolerance
from hf_tiny import IMAGE_TOKEN, hf_logits, make_hf_checkpoint, padded_batch
from vqathinker_jax import model


def _assert_logits(ours, ref, mask):
  tolerance.assert_close(ours, ref, tolerance.LOGITS_VS_TORCH, where=mask.astype(bool),
                         name="logits")


def test_parity_right_padded_batch_different_frame_counts(hf_checkpoint):
  path, hf = hf_checkpoint
  m, cfg = model.from_pretrained(path, dtype=jnp.float32)
  assert not cfg.text.tie_word_embeddings and cfg.image_token_id == IMAGE_TOKEN
  ids, pix, mask = padded_batch(frames=(2, 1))
  ours = m(input_ids=ids, pixel_values=pix, attention_mask=mask)
  ref = hf_logits(hf, ids, pix, mask)
  assert ours.shape == ref.shape == (2, ids.shape[1], 512)
  assert np.abs(ref).max() > 0.1  # a non-degenerate model
  _assert_logits(ours, ref, mask)


@pytest.mark.parametrize("variant", [
    dict(tied=True),
    dict(qk_norm=True, norm_type="rms_norm", final_norm=True),  # InternViT-6B style
])
def test_parity_variants(tmp_path, variant):
  hf = make_hf_checkpoint(tmp_path, seed=1, **variant)
  m, cfg = model.from_pretrained(tmp_path)
  assert cfg.text.tie_word_embeddings == variant.get("tied", False)
  assert (m.llm.lm_head is None) == variant.get("tied", False)
  ids, pix, mask = padded_batch(seed=1, frames=(1, 2))
  _assert_logits(m(input_ids=ids, pixel_values=pix, attention_mask=mask),
                 hf_logits(hf, ids, pix, mask), mask)


def test_parity_at_other_frame_size_interpolates_positions(hf_checkpoint):
  """84 px frames on a 56 px model: position embeddings resized bicubically (docs/method.md §6)."""
  path, hf = hf_checkpoint
  m, _ = model.from_pretrained(path)
  ids, pix, mask = padded_batch(seed=2, size=84, frames=(2, 1), length=24)
  _assert_logits(m(input_ids=ids, pixel_values=pix, attention_mask=mask),
                 hf_logits(hf, ids, pix, mask), mask)


def test_text_only_forward_matches(hf_checkpoint):
  import torch
  path, hf = hf_checkpoint
  m, _ = model.from_pretrained(path)
  ids = np.random.default_rng(3).integers(0, IMAGE_TOKEN, (2, 9))
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
  _assert_logits(m(input_ids=ids), ref, np.ones(ids.shape, bool))


def test_bfloat16_forward_close_to_float32(hf_checkpoint):
  path, _ = hf_checkpoint
  m32, _ = model.from_pretrained(path, dtype=jnp.float32)
  m16, cfg16 = model.from_pretrained(path, dtype=jnp.bfloat16)
  assert cfg16.dtype == cfg16.param_dtype == "bfloat16"
  assert m16.llm.embed[...].dtype == jnp.bfloat16
  ids, pix, mask = padded_batch(seed=4)
  l32 = np.asarray(m32(input_ids=ids, pixel_values=pix, attention_mask=mask))
  l16 = np.asarray(m16(input_ids=ids, pixel_values=pix.astype(jnp.bfloat16), attention_mask=mask))
  valid = mask.astype(bool)
  # bfloat16 rounds every weight and activation to 8 significant bits: a few bfloat16
  # roundings at the logits' scale after 2 + 2 layers, and the next-token choice agrees
  # almost everywhere.
  tolerance.assert_close(l16, l32, 13, where=valid, eps=tolerance.EPS_BF16, name="bf16 logits")
  assert (l16.argmax(-1) == l32.argmax(-1))[valid].mean() > 0.9


@pytest.mark.parametrize("bad, message", [
    (lambda ids, pix: (ids, pix[:1]), "visual tokens"),
    (lambda ids, pix: (ids, pix.transpose(0, 3, 1, 2)), "channels last"),
    (lambda ids, pix: (ids, (pix * 100).astype(np.uint8)), "normalised floats"),
    (lambda ids, pix: (ids, pix[:, :42, :42]), "multiple of 28"),
    (lambda ids, pix: (ids, None), "no pixel_values"),
    (lambda ids, pix: (ids[0], pix), "input_ids must be"),
])
def test_bad_inputs_get_clear_errors(hf_checkpoint, bad, message):
  m, _ = model.from_pretrained(hf_checkpoint[0])
  ids, pix, mask = padded_batch()
  ids, pix = bad(ids, pix)
  with pytest.raises(ValueError, match=message):
    m(input_ids=ids, pixel_values=pix, attention_mask=mask)
