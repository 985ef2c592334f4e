"""benchmarks/shapes.py: the 1B shape is InternVL3-1B's, and its FLOP and byte counts agree
with PyTorch's own FLOP counter and transformers' parameter lists."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import shapes  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _meta_model(shape):
  with torch.device("meta"):
    return transformers.InternVLForConditionalGeneration(shapes.hf_config(shape))


def test_internvl3_1b_shape_has_the_released_parameter_count():
  m = _meta_model(shapes.INTERNVL3_1B)
  assert sum(p.numel() for p in m.parameters()) == 938_193_024
  # What a decode step reads: the language model less its embedding table, plus the head.
  lm = sum(p.numel() for n, p in m.named_parameters()
           if n.startswith(("model.language_model.", "lm_head.")) and "embed_tokens" not in n)
  assert shapes.lm_weight_count(shapes.INTERNVL3_1B) == lm


def test_forward_flops_match_torch_flop_counter():
  """One frame and a P-token prompt through transformers' model (attention over all P x P
  pairs, the LM head on every token) under torch's FlopCounterMode."""
  from torch.utils.flop_counter import FlopCounterMode
  shape = shapes.TINY
  torch.manual_seed(0)
  # Eager attention: its score and value products are matmuls the counter sees (it does
  # not count the fused SDPA kernel).
  hf = transformers.InternVLForConditionalGeneration._from_config(
      shapes.hf_config(shape), attn_implementation="eager").eval()
  ids, pix = shapes.prompt_batch(shape, videos=1, frames=1, text=5)
  P = ids.shape[1]
  with torch.no_grad(), FlopCounterMode(display=False) as counter:
    hf(input_ids=torch.tensor(ids).long(),
       pixel_values=torch.tensor(pix[0].transpose(0, 3, 1, 2).copy()))
  expected = shapes._vit_flops(shape) + shapes._lm_flops(shape, P, P * P, P)
  assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)


def test_update_flops_is_three_forwards_plus_reference():
  s, args = shapes.TINY, (2, 4, 40, 8, 1)
  assert shapes.update_flops(s, *args, beta=0.04) == pytest.approx(
      shapes.update_flops(s, *args, beta=0.0) * 4 / 3)


def test_prompt_batch_places_the_frames():
  ids, pix = shapes.prompt_batch(shapes.INTERNVL3_1B, videos=2, frames=6, text=80)
  assert ids.shape == (2, 1696) and pix.shape == (2, 6, 448, 448, 3)
  assert (ids == shapes.INTERNVL3_1B.image_token_id).sum() == 2 * 6 * 256
