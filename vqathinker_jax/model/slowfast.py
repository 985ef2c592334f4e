"""SlowFast-R50 (PyTorchVideo `slowfast_r50`) as VQAThinker's frozen motion encoder.

Channels-last 3-D convolutions; batch norm in inference form (running statistics,
never updated). Module and leaf names mirror PyTorchVideo's `blocks.{0..4}` so that
the checkpoint map is the identity on names (see `torch_names`).
Legend: B videos, T frames (time), H/W pixels, C channels, F feature width.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
SLOW_CONV_A_T = (1, 1, 3, 3)  # temporal kernel of each stage's first 1x1 conv, slow pathway
FAST_CONV_A_T = (3, 3, 3, 3)  # ... and fast pathway
ALPHA = 4                     # fast/slow frame-rate ratio: the fusion conv's temporal stride
BETA_INV = 8                  # slow/fast channel ratio
FUSION_RATIO = 2              # fusion conv output = 2x the fast pathway's channels


@dataclasses.dataclass(frozen=True)
class SlowFastConfig:
  """SlowFast-R50 and VQAThinker's frame selection (docs/method.md §1, §6)."""
  width: int = 64                 # slow stem channels (fast: width / 8); 64 is R50
  depth: int = 50                 # 50 | 101 | 152 (stage depths 3,4,6,3 for 50)
  pool_t_slow: int = 8            # head AvgPool3d temporal kernel, slow pathway
  pool_t_fast: int = 32           # ... fast pathway
  pool_hw: int = 7                # head AvgPool3d spatial kernel
  slow_div_train: int = 3         # training: slow frames = linspace(0, T-1, T // 3)
  slow_div_eval: int = 4          # evaluation: T // 4
  repeat_train: int = 6           # training: repeat each time step x6 after block 4
  repeat_eval: int = 4            # evaluation: x4
  bn_eps: float = 1e-5            # BatchNorm3d eps

  def feature_dim(self) -> int:
    """Width of the pooled feature: slow (32 w) || fast (4 w) = 2304 for R50."""
    return 32 * self.width + 32 * self.width // BETA_INV


class FrozenParam(nnx.Variable):
  """A weight that is loaded, never trained: optimisers built with `wrt=nnx.Param` skip it."""


def _frozen(value, dtype) -> FrozenParam:
  return FrozenParam(jnp.asarray(value).astype(dtype),
                     out_sharding=(None,) * jnp.ndim(value), eager_sharding=False)


class Conv3d(nnx.Module):
  """Bias-free 3-D convolution, kernel ``[kt, kh, kw, in, out]``, PyTorch padding."""

  def __init__(self, c_in, c_out, kernel, stride, *, dtype, param_dtype):
    # Zeros here; `SlowFast` draws all kernels at once (see `_init_kernels`).
    self.weight = _frozen(jnp.zeros((*kernel, c_in, c_out)), param_dtype)
    self.stride, self.dtype = tuple(stride), dtype
    self.padding = tuple((k // 2, k // 2) for k in kernel)

  def __call__(self, x_BTHWC):
    return jax.lax.conv_general_dilated(
        x_BTHWC.astype(self.dtype), self.weight[...].astype(self.dtype), self.stride,
        self.padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        preferred_element_type=jnp.float32).astype(self.dtype)


class BatchNorm(nnx.Module):
  """Frozen BatchNorm3d: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``."""

  def __init__(self, c, eps, *, param_dtype):
    self.weight = _frozen(jnp.ones((c,)), param_dtype)
    self.bias = _frozen(jnp.zeros((c,)), param_dtype)
    self.running_mean = _frozen(jnp.zeros((c,)), param_dtype)
    self.running_var = _frozen(jnp.ones((c,)), param_dtype)
    self.eps = eps

  def __call__(self, x_BTHWC):
    f32 = lambda v: v[...].astype(jnp.float32)
    scale = f32(self.weight) * jax.lax.rsqrt(f32(self.running_var) + self.eps)
    shift = f32(self.bias) - f32(self.running_mean) * scale
    return (x_BTHWC.astype(jnp.float32) * scale + shift).astype(x_BTHWC.dtype)


class ConvNorm(nnx.Module):
  """conv -> norm, named like PyTorchVideo's stem (`conv`, `norm`)."""

  def __init__(self, c_in, c_out, kernel, stride, cfg, dt, pdt):
    self.conv = Conv3d(c_in, c_out, kernel, stride, dtype=dt, param_dtype=pdt)
    self.norm = BatchNorm(c_out, cfg.bn_eps, param_dtype=pdt)

  def __call__(self, x):
    return self.norm(self.conv(x))


class Stem(ConvNorm):
  """conv (k x 7 x 7, stride 1,2,2) -> norm -> ReLU -> max-pool (1,3,3) stride (1,2,2)."""

  def __call__(self, x):
    x = jax.nn.relu(super().__call__(x))
    pad = [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)]
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3, 1), (1, 1, 2, 2, 1), pad)


class Bottleneck(nnx.Module):
  """conv_a (kt x 1 x 1) -> conv_b (1 x 3 x 3, spatial stride) -> conv_c (1 x 1 x 1)."""

  def __init__(self, c_in, c_inner, c_out, kt, stride, cfg, dt, pdt):
    kw = dict(dtype=dt, param_dtype=pdt)
    self.conv_a = Conv3d(c_in, c_inner, (kt, 1, 1), (1, 1, 1), **kw)
    self.norm_a = BatchNorm(c_inner, cfg.bn_eps, param_dtype=pdt)
    self.conv_b = Conv3d(c_inner, c_inner, (1, 3, 3), (1, stride, stride), **kw)
    self.norm_b = BatchNorm(c_inner, cfg.bn_eps, param_dtype=pdt)
    self.conv_c = Conv3d(c_inner, c_out, (1, 1, 1), (1, 1, 1), **kw)
    self.norm_c = BatchNorm(c_out, cfg.bn_eps, param_dtype=pdt)

  def __call__(self, x):
    x = jax.nn.relu(self.norm_a(self.conv_a(x)))
    x = jax.nn.relu(self.norm_b(self.conv_b(x)))
    return self.norm_c(self.conv_c(x))


class ResBlock(nnx.Module):
  """ReLU(shortcut + bottleneck); the shortcut is a strided 1x1 conv + norm when the
  shape changes (PyTorchVideo's `branch1_*`)."""

  def __init__(self, c_in, c_inner, c_out, kt, stride, cfg, dt, pdt):
    if c_in != c_out or stride != 1:
      self.branch1_conv = Conv3d(c_in, c_out, (1, 1, 1), (1, stride, stride), dtype=dt,
                                 param_dtype=pdt)
      self.branch1_norm = BatchNorm(c_out, cfg.bn_eps, param_dtype=pdt)
    else:
      self.branch1_conv = self.branch1_norm = None
    self.branch2 = Bottleneck(c_in, c_inner, c_out, kt, stride, cfg, dt, pdt)

  def __call__(self, x):
    shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))
    return jax.nn.relu(shortcut + self.branch2(x))


class ResStage(nnx.Module):
  def __init__(self, depth, c_in, c_inner, c_out, kt, stride, cfg, dt, pdt):
    self.res_blocks = nnx.List([
        ResBlock(c_in if i == 0 else c_out, c_inner, c_out, kt, stride if i == 0 else 1,
                 cfg, dt, pdt) for i in range(depth)])

  def __call__(self, x):
    for block in self.res_blocks:
      x = block(x)
    return x


class Fusion(nnx.Module):
  """Fast -> slow lateral connection: ReLU(norm(conv (7,1,1) stride (4,1,1))) of the fast
  pathway, concatenated to the slow pathway's channels. Named `conv_fast_to_slow`."""

  def __init__(self, c_fast, cfg, dt, pdt):
    self.conv_fast_to_slow = Conv3d(c_fast, FUSION_RATIO * c_fast, (7, 1, 1), (ALPHA, 1, 1),
                                    dtype=dt, param_dtype=pdt)
    self.norm = BatchNorm(FUSION_RATIO * c_fast, cfg.bn_eps, param_dtype=pdt)

  def __call__(self, slow, fast):
    fuse = jax.nn.relu(self.norm(self.conv_fast_to_slow(fast)))
    return jnp.concatenate([slow, fuse], axis=-1), fast


class MultiPathway(nnx.Module):
  """One of PyTorchVideo's `blocks.0..4`: a [slow, fast] pair, then (blocks 0-3) fusion."""

  def __init__(self, slow, fast, fusion):
    self.multipathway_blocks = nnx.List([slow, fast])
    self.multipathway_fusion = fusion

  def __call__(self, slow, fast):
    slow, fast = self.multipathway_blocks[0](slow), self.multipathway_blocks[1](fast)
    if self.multipathway_fusion is not None:
      slow, fast = self.multipathway_fusion(slow, fast)
    return slow, fast


def slow_indices(num_frames: int, train: bool, cfg: SlowFastConfig) -> np.ndarray:
  """Slow-pathway frames: floor(linspace(0, T-1, T // div)) as `torch.linspace().long()`."""
  n = num_frames // (cfg.slow_div_train if train else cfg.slow_div_eval)
  return np.floor(np.linspace(0, num_frames - 1, n, dtype=np.float32)).astype(np.int32)


def _out_hw(size: int) -> int:
  # Five stride-2 steps (stem conv, max-pool, stages 2-4), each ceil(n / 2).
  for _ in range(5):
    size = (size - 1) // 2 + 1
  return size


def check_frames(shape, dtype, train: bool, cfg: SlowFastConfig) -> None:
  """Raise ValueError naming the problem if frames ``[B, T, H, W, C]`` cannot go through
  SlowFast with this frame selection; called before anything compiles."""
  if len(shape) != 5 or shape[-1] != 3:
    raise ValueError(f"SlowFast frames must be [videos, frames, height, width, 3], got {tuple(shape)}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"SlowFast frames must be normalised floats, got dtype {dtype}")
  T, H, W = shape[1], shape[2], shape[3]
  mode = "train" if train else "eval"
  div, rep = ((cfg.slow_div_train, cfg.repeat_train) if train else
              (cfg.slow_div_eval, cfg.repeat_eval))
  t_slow, t_fused = T // div, (T - 1) // ALPHA + 1
  if t_slow < 1:
    raise ValueError(f"{T} frames are too few for SlowFast's slow pathway in {mode} mode "
                     f"(it takes T // {div} frames); give at least {div}")
  if t_slow != t_fused:
    raise ValueError(f"{T} frames: the slow pathway gets T // {div} = {t_slow} frames but the "
                     f"fast->slow fusion yields floor((T - 1) / {ALPHA}) + 1 = {t_fused}; "
                     f"choose T so that they agree ({mode} mode)")
  if t_slow * rep < cfg.pool_t_slow or T * rep < cfg.pool_t_fast:
    raise ValueError(f"{T} frames are too few in {mode} mode: after the x{rep} repeat the slow "
                     f"pathway has {t_slow * rep} steps (pool needs {cfg.pool_t_slow}) and the "
                     f"fast {T * rep} (pool needs {cfg.pool_t_fast})")
  if min(_out_hw(H), _out_hw(W)) < cfg.pool_hw:
    raise ValueError(f"frames of {H}x{W} px are too small for SlowFast: its final "
                     f"{_out_hw(H)}x{_out_hw(W)} grid is below the {cfg.pool_hw}x{cfg.pool_hw} pool")


def _pool_then_mean(x_BTHWC, kt, khw):
  """AvgPool3d (kt, khw, khw), stride 1, VALID, then the mean over the pooled grid:
  the reference's two-step pooling, which weights border positions less."""
  window = (1, kt, khw, khw, 1)
  summed = jax.lax.reduce_window(x_BTHWC.astype(jnp.float32), 0.0, jax.lax.add, window,
                                 (1,) * 5, "VALID")
  return (summed / (kt * khw * khw)).mean(axis=(1, 2, 3))


def _init_kernels(m: nnx.Module, rngs: nnx.Rngs) -> None:
  """He-normal kernels from one random draw. SlowFast is loaded from a checkpoint in real
  use; random weights serve tests and demos, and one draw sliced ~110 ways compiles in a
  fraction of the time of ~110 separate draws (35 s under jit on CPU)."""
  kernels = [v for _, v in nnx.to_flat_state(nnx.state(m, FrozenParam)) if v.ndim == 5]
  noise = jax.random.normal(rngs.params(), (sum(v.size for v in kernels),))
  offset = 0
  for v in kernels:
    fan_in = math.prod(v.shape[:4])
    w = noise[offset:offset + v.size].reshape(v.shape) * math.sqrt(2.0 / fan_in)
    v.set_value(w.astype(v.dtype))
    offset += v.size


class SlowFast(nnx.Module):
  """Frames [B, T, H, W, 3] (ImageNet-normalised) -> motion features [B, 32w + 4w]."""

  def __init__(self, cfg: SlowFastConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    if cfg.depth not in STAGE_DEPTHS:
      raise ValueError(f"SlowFast depth {cfg.depth} is not one of {sorted(STAGE_DEPTHS)}")
    if cfg.width % BETA_INV:
      raise ValueError(f"SlowFast width {cfg.width} must be a multiple of {BETA_INV}")
    a = (cfg, dtype, param_dtype)
    w, wf = cfg.width, cfg.width // BETA_INV
    blocks = [MultiPathway(Stem(3, w, (1, 7, 7), (1, 2, 2), *a),
                           Stem(3, wf, (5, 7, 7), (1, 2, 2), *a), Fusion(wf, *a))]
    c_slow, c_fast = w + FUSION_RATIO * wf, wf
    for i, depth in enumerate(STAGE_DEPTHS[cfg.depth]):
      inner, stride = w * 2 ** i, 1 if i == 0 else 2
      slow = ResStage(depth, c_slow, inner, 4 * inner, SLOW_CONV_A_T[i], stride, *a)
      fast = ResStage(depth, c_fast, inner // BETA_INV, 4 * inner // BETA_INV,
                      FAST_CONV_A_T[i], stride, *a)
      last = i == len(STAGE_DEPTHS[cfg.depth]) - 1
      blocks.append(MultiPathway(slow, fast, None if last else Fusion(4 * inner // BETA_INV, *a)))
      c_slow = 4 * inner + (0 if last else FUSION_RATIO * 4 * inner // BETA_INV)
      c_fast = 4 * inner // BETA_INV
    self.blocks = nnx.List(blocks)
    self.cfg = cfg
    _init_kernels(self, rngs)

  def __call__(self, frames_BTHWC: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.cfg
    check_frames(frames_BTHWC.shape, frames_BTHWC.dtype, train, cfg)
    slow = jnp.take(frames_BTHWC, jnp.asarray(slow_indices(frames_BTHWC.shape[1], train, cfg)),
                    axis=1)
    fast = frames_BTHWC
    for block in self.blocks:
      slow, fast = block(slow, fast)
    repeat = cfg.repeat_train if train else cfg.repeat_eval
    # Each time step repeated in place (jnp.repeat, not a tile) so the pools fit.
    slow, fast = jnp.repeat(slow, repeat, axis=1), jnp.repeat(fast, repeat, axis=1)
    slow_BF = _pool_then_mean(slow, cfg.pool_t_slow, cfg.pool_hw)
    fast_BF = _pool_then_mean(fast, cfg.pool_t_fast, cfg.pool_hw)
    return jnp.concatenate([slow_BF, fast_BF], axis=-1)


def infer_config(shapes: dict[str, tuple], **fields) -> SlowFastConfig:
  """SlowFastConfig with width and depth read off PyTorchVideo-named tensor shapes
  (keys without `blocks.`); ``fields`` set the rest. No tensors: just ``fields``."""
  stem = shapes.get("0.multipathway_blocks.0.conv.weight")
  if stem is not None:
    fields.setdefault("width", int(stem[0]))
    n3 = {k.split(".")[4] for k in shapes if k.startswith("3.multipathway_blocks.0.res_blocks.")}
    by_stage3 = {d[2]: depth for depth, d in STAGE_DEPTHS.items()}
    if len(n3) in by_stage3:
      fields.setdefault("depth", by_stage3[len(n3)])
  return SlowFastConfig(**fields)


def torch_names(cfg: SlowFastConfig) -> dict[str, tuple[str, str]]:
  """Our flat state path -> (PyTorchVideo key without `blocks.`, layout kind)."""
  abstract = nnx.eval_shape(
      lambda: SlowFast(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(abstract)):
    ours = ".".join(map(str, path))
    out[ours] = (ours[len("blocks."):], "conv3d" if len(var.shape) == 5 else "vec")
  return out


def load_state(m: SlowFast, tensors) -> None:
  """Copy PyTorch-layout tensors (keys as PyTorchVideo's, `blocks.` prefix optional;
  other keys ignored) into ``m`` in place, checking every shape."""
  tensors = {k[len("blocks."):] if k.startswith("blocks.") else k: v for k, v in tensors.items()}
  for path, var in nnx.to_flat_state(nnx.state(m)):
    key = ".".join(map(str, path))[len("blocks."):]
    if key not in tensors:
      raise KeyError(f"SlowFast tensor {key} is missing")
    t = np.asarray(tensors[key])
    t = t.transpose(2, 3, 4, 1, 0) if t.ndim == 5 else t
    if t.shape != var.shape:
      raise ValueError(f"SlowFast tensor {key}: shape {t.shape} (ours), expected {var.shape}")
    var.set_value(jnp.asarray(t, var.dtype))
