"""PyTorchVideo's own SlowFast as the parity reference.

PyTorchVideo 0.1.5 imports `torchvision.ops.RoIAlign` at module level, only for its
detection heads. No torchvision build on PyPI imports beside the torch 2.13.0 CPU
wheel, so when torchvision cannot be imported we stand in an empty module for it while
PyTorchVideo imports: `create_slowfast` (classification) never touches RoIAlign. The stand-in
leaves `sys.modules` afterwards, or transformers' `is_torchvision_available` would meet a
module without a spec (a ValueError) in whichever test happens to run after this one.
"""

import sys
import types

import numpy as np
import torch


def _stub_torchvision() -> tuple[str, ...]:
  """The names it put in `sys.modules` (none when the real torchvision imports)."""
  try:
    import torchvision.ops  # noqa: F401
    return ()
  except Exception:  # ImportError, or RuntimeError from a mismatched build
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
  tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

  class RoIAlign:  # pragma: no cover - only detection heads construct it
    def __init__(self, *a, **k):
      raise RuntimeError("torchvision is not importable here; RoIAlign is a stub")

  ops.RoIAlign, tv.ops = RoIAlign, ops
  sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
  return ("torchvision", "torchvision.ops")


def create_slowfast(**kwargs):
  stubs = _stub_torchvision()
  try:
    from pytorchvideo.models.slowfast import create_slowfast as create
  finally:
    for name in stubs:
      sys.modules.pop(name, None)
  return create(**kwargs)


def torch_slowfast(cfg, calib_BCTHW: torch.Tensor, slow_idx, seed=0):
  """PyTorchVideo's model with random affine batch-norm parameters, running statistics
  set from one pass over ``calib`` so that activations stay O(1) through 16 blocks."""
  torch.manual_seed(seed)
  m = create_slowfast(stem_dim_outs=(cfg.width, cfg.width // 8), model_depth=cfg.depth,
                              head_pool_kernel_sizes=((cfg.pool_t_slow, cfg.pool_hw, cfg.pool_hw),
                                                      (cfg.pool_t_fast, cfg.pool_hw, cfg.pool_hw)))
  for mod in m.modules():
    if isinstance(mod, torch.nn.BatchNorm3d):
      torch.nn.init.uniform_(mod.weight, 0.5, 1.5)
      torch.nn.init.normal_(mod.bias, 0.0, 0.1)
      mod.momentum = 1.0
  m.train()
  with torch.no_grad():
    feature_blocks(m, calib_BCTHW, slow_idx)
  return m.eval()


def feature_blocks(m, frames_BCTHW, slow_idx):
  x = [frames_BCTHW[:, :, torch.as_tensor(slow_idx)], frames_BCTHW]
  for block in m.blocks[:5]:
    x = block(x)
  return x


def torch_features(m, frames_BTHWC: np.ndarray, slow_idx, repeat) -> np.ndarray:
  """The reference's feature head: blocks 0-4, repeat in time, per-pathway AvgPool3d of
  the classification head, global mean, slow || fast."""
  with torch.no_grad():
    x = feature_blocks(m, torch.from_numpy(frames_BTHWC).permute(0, 4, 1, 2, 3), slow_idx)
    pooled = [m.blocks[5].pool[i](x[i].repeat_interleave(repeat, dim=2)).mean((2, 3, 4))
              for i in range(2)]
    return torch.cat(pooled, 1).numpy()
