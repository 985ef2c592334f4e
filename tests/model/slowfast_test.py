"""SlowFast-R50 against PyTorchVideo's `create_slowfast` on random weights (docs/method.md §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import tolerance
from ptv_ref import torch_features, torch_slowfast
from vqathinker_jax.model import slowfast
from vqathinker_jax.model.slowfast import SlowFastConfig


def ours_from(m_torch, cfg):
  ours = slowfast.SlowFast(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  slowfast.load_state(ours, {k: v.numpy() for k, v in m_torch.state_dict().items()})
  return ours


# Training's shape (6 frames at 448 px); evaluation's frame selection at 304 px rather than
# its 560 (the same code path at a third of the cost: five ceil-halvings 304 -> 10, one of
# them odd like 560's, and a grid larger than the 7x7 pool).
@pytest.mark.parametrize("frames,size,train,batch", [(6, 448, True, 2), (12, 304, False, 1)])
def test_parity_with_pytorchvideo(frames, size, train, batch):
  cfg = SlowFastConfig()
  rng = np.random.default_rng(frames)
  x = rng.standard_normal((batch, frames, size, size, 3), dtype=np.float32)
  idx = slowfast.slow_indices(frames, train, cfg)
  m_torch = torch_slowfast(cfg, torch.from_numpy(x).permute(0, 4, 1, 2, 3), idx)
  want = torch_features(m_torch, x, idx, cfg.repeat_train if train else cfg.repeat_eval)
  got = np.asarray(jax.jit(lambda m, v: m(v, train=train))(ours_from(m_torch, cfg), x))
  assert got.shape == (batch, 2304)
  assert np.abs(want).max() > 0.1  # a real signal, not vanished activations
  # Two different convolution algorithms through 50 layers of batch-normed ReLU blocks,
  # pooled: rounding at the features' scale.
  tolerance.assert_close(got, want, 750, name="features")


def test_tiny_variant_parity_and_batch_independence():
  """Width 8 and 2x2 head pools at 64 px: the config knobs the demo uses."""
  cfg = SlowFastConfig(width=8, pool_hw=2)
  x = np.random.default_rng(0).standard_normal((3, 6, 64, 64, 3), dtype=np.float32)
  idx = slowfast.slow_indices(6, True, cfg)
  m_torch = torch_slowfast(cfg, torch.from_numpy(x).permute(0, 4, 1, 2, 3), idx)
  ours = jax.jit(lambda m, v: m(v, train=True))
  m = ours_from(m_torch, cfg)
  got = np.asarray(ours(m, x))
  assert got.shape == (3, cfg.feature_dim()) == (3, 288)
  # 2x2 pools average 4 positions instead of 64: less rounding averages out.
  tolerance.assert_close(got, torch_features(m_torch, x, idx, 6), 2100, name="features")
  # One video alone: the same arithmetic on a batch of 1 (other loop blockings).
  tolerance.assert_close(ours(m, x[1:2]), got[1:2], 90, name="alone")


@pytest.mark.parametrize("frames,train,want", [
    (6, True, [0, 5]), (12, False, [0, 5, 11]), (12, True, [0, 3, 7, 11]), (16, False, [0, 5, 10, 15])])
def test_slow_indices_follow_spec(frames, train, want):
  assert slowfast.slow_indices(frames, train, SlowFastConfig()).tolist() == want


@pytest.mark.parametrize("shape,dtype,train,match", [
    ((1, 2, 224, 224, 3), np.float32, True, "too few"),      # T // 3 = 0 slow frames
    ((1, 12, 224, 224, 3), np.float32, True, "agree"),       # 4 slow frames, fusion gives 3
    ((1, 6, 224, 224, 4), np.float32, True, "height, width, 3"),
    ((1, 6, 224, 224, 3), np.uint8, True, "floats"),
    ((1, 6, 128, 128, 3), np.float32, True, "too small"),
    ((1, 4, 224, 224, 3), np.float32, False, "too few"),     # 1 slow x4 = 4 < 8
])
def test_bad_frames_are_named(shape, dtype, train, match):
  with pytest.raises(ValueError, match=match):
    slowfast.check_frames(shape, np.dtype(dtype), train, SlowFastConfig())


def test_infer_config_reads_width_and_depth():
  shapes = dict(_torch_shapes(SlowFastConfig(width=16)).values())
  cfg = slowfast.infer_config(shapes, repeat_eval=8)
  assert (cfg.width, cfg.depth, cfg.repeat_eval) == (16, 50, 8)
  assert slowfast.infer_config({}) == SlowFastConfig()


def _torch_shapes(cfg):
  m = nnx.eval_shape(lambda: slowfast.SlowFast(cfg, dtype=jnp.float32, param_dtype=jnp.float32,
                                               rngs=nnx.Rngs(0)))
  flat = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(m))}
  torch_layout = lambda s: (s[4], s[3], s[0], s[1], s[2]) if len(s) == 5 else s
  return {ours: (key, torch_layout(flat[ours].shape))
          for ours, (key, _) in slowfast.torch_names(cfg).items()}
