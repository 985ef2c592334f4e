"""The Qwen2.5-VL vision tower against transformers' `Qwen2_5_VisionTransformerPretrainedModel`
on a tiny random config (windows of 2x2 merge units, two full-attention blocks), float32;
its host-side window index, segments and RoPE positions against transformers' own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hf_tiny
import tolerance
from vqathinker_jax.model import hf_checkpoint
from vqathinker_jax.model import qwen_vision as qv

# depth 4, blocks 1 and 3 full attention; head dim 8; window_size 56 px = 2x2 merge units
# (4x4 patches), so windows matter at these grid sizes.
TINY = qv.QwenVisionConfig(depth=4, hidden_size=32, intermediate_size=48, num_heads=4,
                           out_hidden_size=64, window_size=56, fullatt_block_indexes=(1, 3))
# XLA against torch, each summing in its own order, through 4 blocks and the merger:
# largest seen 13.6 (1.6e-6 of the output scale; 1e-4 of it would be 839).
VS_TORCH = 60

GRIDS = {
    "image": [[1, 6, 10]],                              # 3x5 merge units: partial windows
    "video": [[3, 10, 14]],                             # 3 temporal grids, 5x7 units
    "mixed": [[1, 4, 8], [2, 6, 10], [1, 12, 4], [1, 2, 2]],  # divisible, partial, 1 unit
}


def hf_vision_config(cfg: qv.QwenVisionConfig):
  from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
  return Qwen2_5_VLVisionConfig(
      depth=cfg.depth, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
      num_heads=cfg.num_heads, out_hidden_size=cfg.out_hidden_size, patch_size=cfg.patch_size,
      temporal_patch_size=cfg.temporal_patch_size, spatial_merge_size=cfg.spatial_merge_size,
      window_size=cfg.window_size, fullatt_block_indexes=list(cfg.fullatt_block_indexes),
      in_channels=cfg.in_chans, tokens_per_second=2)


@pytest.fixture(scope="module")
def hf():
  """The tiny transformers tower, every parameter re-drawn: matrices ~ N(0, 1/fan_in),
  norm weights 1 + 0.1 N(0, 1) (they initialise to 1), biases 0.1 N(0, 1)."""
  import torch
  from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
      Qwen2_5_VisionTransformerPretrainedModel)
  torch.manual_seed(0)
  m = Qwen2_5_VisionTransformerPretrainedModel._from_config(hf_vision_config(TINY),
                                                            attn_implementation="eager")
  return hf_tiny.redraw_(m, 0).eval()


@pytest.fixture(scope="module")
def hf_tensors(hf):
  return {"visual." + k: v.detach().numpy() for k, v in hf.state_dict().items()}


@pytest.fixture(scope="module", params=qv.ATTENTION_MODES)
def tower(request, hf_tensors):
  m = qv.QwenVisionTower(TINY, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0),
                         attention=request.param)
  return hf_checkpoint.load_qwen_vision(m, hf_tensors)


def pixels(grid, seed=0) -> np.ndarray:
  P = int(np.prod(np.asarray(grid), axis=1).sum())
  return np.random.default_rng(seed).standard_normal((P, TINY.patch_dim)).astype(np.float32)


def hf_forward(hf, px, grid) -> np.ndarray:
  import torch
  with torch.no_grad():
    out = hf(torch.from_numpy(px), grid_thw=torch.tensor(grid))
  return out.pooler_output.numpy()


# --------------------------------------------------------------------- parity ---

@pytest.mark.parametrize("case", sorted(GRIDS))
def test_tower_matches_transformers(hf, tower, case):
  grid = GRIDS[case]
  px = pixels(grid)
  ref = hf_forward(hf, px, grid)
  ours = np.asarray(tower(px, np.asarray(grid)))
  assert ours.shape == ref.shape == (len(px) // 4, TINY.out_hidden_size)
  assert np.abs(ref).max() > 0.1  # a non-degenerate model
  tolerance.assert_close(ours, ref, VS_TORCH, name=f"{case} merged tokens ({tower.attention})")


def test_windows_change_the_output(hf_tensors):
  """With every block on full attention the output moves: the window blocks are tested."""
  import dataclasses
  cfg = dataclasses.replace(TINY, fullatt_block_indexes=(0, 1, 2, 3))
  grid = GRIDS["video"]
  px = pixels(grid)
  outs = []
  for c in (TINY, cfg):
    m = qv.QwenVisionTower(c, rngs=nnx.Rngs(0))
    outs.append(np.asarray(hf_checkpoint.load_qwen_vision(m, hf_tensors)(px, grid)))
  assert np.abs(outs[0] - outs[1]).max() > 1e-2 * np.abs(outs[0]).max()


def test_jit_with_plan_argument_matches_eager(hf_tensors):
  """`encode` under jit with the plan as a traced argument (static shapes per grid)."""
  m = hf_checkpoint.load_qwen_vision(qv.QwenVisionTower(TINY, rngs=nnx.Rngs(0)), hf_tensors)
  grid = GRIDS["mixed"]
  px = pixels(grid, seed=1)
  plan = qv.make_plan(grid, TINY)
  jitted = nnx.jit(lambda mod, x, p: mod.encode(x, p))(m, jnp.asarray(px), plan)
  tolerance.assert_close(jitted, m(px, grid), 16, name="jit vs eager")  # seen 3.7


def test_rejects_pixels_that_do_not_match_the_grid():
  m = qv.QwenVisionTower(TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="do not match the grids"):
    m(pixels([[1, 4, 4]]), [[1, 4, 6]])
  with pytest.raises(ValueError, match="multiples of spatial_merge_size"):
    m(pixels([[1, 3, 4]]), [[1, 3, 4]])


# ------------------------------------------------------------- host metadata ---

WINDOW_GRIDS = [
    [[1, 6, 10]], [[3, 10, 14]], [[1, 8, 8]], [[2, 16, 24]], [[1, 2, 2]],
    [[1, 4, 8], [2, 6, 10], [1, 12, 4]], [[1, 26, 46], [10, 26, 46]], [[4, 30, 2]],
]


@pytest.mark.parametrize("window_size", [56, 112, 168])
@pytest.mark.parametrize("grid", WINDOW_GRIDS, ids=str)
def test_window_index_matches_transformers(grid, window_size):
  import torch
  from transformers.vision_utils import get_vision_window_index
  ref_idx, ref_cu = get_vision_window_index(torch.tensor(grid), spatial_merge_size=2,
                                            window_size=window_size, patch_size=14)
  idx, cu = qv.get_window_index(np.asarray(grid), window_size=window_size)
  np.testing.assert_array_equal(idx, ref_idx.numpy())
  np.testing.assert_array_equal(cu, ref_cu.numpy())


def test_window_index_worked_example():
  """Spec §2.3: 364x644, 20 frames -> 24 windows per temporal grid of {64, 48, 16, 12}."""
  idx, cu = qv.get_window_index([[10, 26, 46]])
  lens = np.diff(cu)
  assert len(lens) == 240 and set(lens.tolist()) == {64, 48, 16, 12}
  assert cu[-1] == 11960 and sorted(idx.tolist()) == list(range(11960 // 4))


@pytest.mark.parametrize("grid", WINDOW_GRIDS[:6], ids=str)
def test_positions_and_cu_seqlens_match_transformers(grid):
  import torch
  from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids
  g = torch.tensor(grid)
  np.testing.assert_array_equal(qv.rope_positions(grid), get_vision_position_ids(g, 2).numpy())
  np.testing.assert_array_equal(qv.get_cu_seqlens(grid), get_vision_cu_seqlens(g).numpy())


def test_segments_gather_and_scatter_are_inverse():
  plan = qv.make_plan([[2, 6, 10], [1, 4, 8]], TINY)
  P = len(plan.window_index_U) * 4
  x = np.arange(P) * 10 + 3
  for segs in (plan.full, plan.window):
    np.testing.assert_array_equal(x[segs.gather_GL][segs.valid_GL], x)
    np.testing.assert_array_equal(x[segs.gather_GL].reshape(-1)[segs.scatter_P], x)
    np.testing.assert_array_equal(np.diff(segs.ids_P) >= 0, True)  # contiguous, in order
  assert plan.full.gather_GL.shape == (3, 60) and plan.window.gather_GL.shape[1] == 16
  np.testing.assert_array_equal(plan.window_index_U[plan.reverse_U], np.arange(P // 4))


def test_rope_cos_sin_matches_transformers():
  import torch
  from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionRotaryEmbedding
  rot = Qwen2_5_VLVisionRotaryEmbedding(hf_vision_config(qv.QwenVisionConfig()))
  pos = qv.rope_positions([[2, 26, 46]])
  cos_ref, sin_ref = rot(torch.zeros(1), torch.from_numpy(pos).long())
  cos, sin = qv.rope_cos_sin(pos, 80, 10000.0)
  # Angles up to 45 rad, in float32 on both sides: cos/sin carry the angle's rounding.
  tolerance.assert_close(cos, cos_ref.numpy(), 64, scale=45.0, name="cos")
  tolerance.assert_close(sin, sin_ref.numpy(), 64, scale=45.0, name="sin")


# -------------------------------------------------------------- config, loading ---

def test_config_from_hf():
  assert qv.QwenVisionConfig.from_hf(hf_vision_config(TINY).to_dict()) == TINY
  # The checkpoints' config.json spelling (in_chans, no rope_parameters).
  seven_b = dict(depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420,
                 num_heads=16, in_chans=3, out_hidden_size=3584, patch_size=14,
                 spatial_merge_size=2, spatial_patch_size=14, window_size=112,
                 fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
                 temporal_patch_size=2, model_type="qwen2_5_vl")
  cfg = qv.QwenVisionConfig.from_hf(seven_b)
  assert cfg == qv.QwenVisionConfig()
  assert (cfg.head_dim, cfg.patch_dim, cfg.window_units) == (80, 1176, 4)
  assert qv.QwenVisionConfig.from_hf({**seven_b, "out_hidden_size": 2048}).out_hidden_size == 2048
  with pytest.raises(ValueError, match="outside depth"):
    qv.QwenVisionConfig(depth=4)


def test_load_accepts_both_prefixes_and_checks_names(hf_tensors):
  a = hf_checkpoint.load_qwen_vision(qv.QwenVisionTower(TINY, rngs=nnx.Rngs(0)), hf_tensors)
  renamed = {"model." + k: v for k, v in hf_tensors.items()}
  renamed["model.language_model.norm.weight"] = np.ones(64, np.float32)  # ignored
  b = hf_checkpoint.load_qwen_vision(qv.QwenVisionTower(TINY, rngs=nnx.Rngs(1)), renamed)
  for (pa, va), (pb, vb) in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b))):
    assert pa == pb
    np.testing.assert_array_equal(va[...], vb[...])
  q = hf_tensors["visual.blocks.2.attn.qkv.weight"]
  np.testing.assert_array_equal(a.blocks[2].attn.k.kernel[...], q[32:64].T)
  with pytest.raises(ValueError, match="missing"):
    hf_checkpoint.load_qwen_vision(qv.QwenVisionTower(TINY, rngs=nnx.Rngs(0)),
                      {k: v for k, v in hf_tensors.items() if "mlp.2" not in k})
  with pytest.raises(ValueError, match="both prefixes"):
    hf_checkpoint.load_qwen_vision(qv.QwenVisionTower(TINY, rngs=nnx.Rngs(0)), {**hf_tensors, **renamed})


def test_bfloat16_stays_near_transformers_bfloat16(hf, hf_tensors):
  """bf16 activations and parameters against transformers in bf16 (its RoPE and RMSNorm
  statistics in float32 as ours): a loose check that no step silently loses precision."""
  import copy
  import torch
  grid = GRIDS["video"]
  px = pixels(grid, seed=2)
  hf16 = copy.deepcopy(hf).to(torch.bfloat16)
  with torch.no_grad():
    ref = hf16(torch.from_numpy(px).to(torch.bfloat16),
               grid_thw=torch.tensor(grid)).pooler_output.float().numpy()
  m = qv.QwenVisionTower(TINY, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  ours = np.asarray(hf_checkpoint.load_qwen_vision(m, hf_tensors)(px, grid).astype(jnp.float32))
  # Two bf16 programs rounding in different places, through 4 blocks and the merger
  # (seen 1.6 bf16 units of the output scale).
  tolerance.assert_close(ours, ref, 8, eps=tolerance.EPS_BF16, name="bf16 merged tokens")
  assert jax.numpy.isfinite(ours).all()
