"""Qwen2.5-VL vision tower: patch embedding, 2-D RoPE, window / full-attention blocks and
the 2x2 patch merger, on transformers' packed layout (`Qwen2_5_VisionTransformerPretrainedModel`).

Every image or video of a call is packed along one patch axis, in the processor's order,
with ``grid_thw`` [n, 3] giving each item's (t, h, w) in patch units. What depends on the
grids only (the window permutation, the attention segments, the RoPE positions) is
computed on the host with numpy (`make_plan`); grids are static per batch, so a plan's
arrays have static shapes and travel through `jax.jit` as ordinary arguments.
Legend: P patches (all items packed), U merge units (P / m², one output token each),
C flattened patch (in_chans·T·p·p), D width, H heads, E head dim, F MLP width, O output
width, G attention segments (frames or windows), L a segment's length (padded to the
longest), n items.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct

from vqathinker_jax.model import layers

NORM_EPS = 1e-6  # hard-coded in transformers for every vision RMSNorm
ATTENTION_MODES = ("segments", "dense")


@dataclasses.dataclass(frozen=True)
class QwenVisionConfig:
  """Defaults: the Qwen2.5-VL-7B-Instruct checkpoint (3B differs only in
  ``out_hidden_size`` = 2048). Not transformers' class defaults (hidden 3584 there)."""
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  out_hidden_size: int = 3584
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112  # pixels
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  in_chans: int = 3
  rope_theta: float = 10000.0

  def __post_init__(self):
    object.__setattr__(self, "fullatt_block_indexes",
                       tuple(int(i) for i in self.fullatt_block_indexes))
    if self.hidden_size % self.num_heads or self.head_dim % 4:
      raise ValueError(f"head dim {self.hidden_size}/{self.num_heads} must be an integer "
                       "divisible by 4 (two axes of rotate-half RoPE)")
    if self.window_units < 1:
      raise ValueError(f"window_size={self.window_size} is under one merge unit "
                       f"({self.spatial_merge_size * self.patch_size} pixels)")
    bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
    if bad:
      raise ValueError(f"fullatt_block_indexes {bad} outside depth {self.depth}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def drop_path_rate(self) -> float:
    """No stochastic depth in this tower (transformers' has none); the RL code asks."""
    return 0.0

  @property
  def patch_dim(self) -> int:
    return self.in_chans * self.temporal_patch_size * self.patch_size ** 2

  @property
  def merge_unit(self) -> int:
    return self.spatial_merge_size ** 2

  @property
  def window_units(self) -> int:
    """A window's side in merge units (4 for the checkpoints: 8x8 patches)."""
    return self.window_size // self.spatial_merge_size // self.patch_size

  @classmethod
  def from_hf(cls, d: dict) -> QwenVisionConfig:
    """From a transformers ``vision_config`` dict (a config.json's or ``to_dict()``'s);
    missing keys take this class's defaults."""
    if d.get("hidden_act", "silu") != "silu":
      raise ValueError(f"vision hidden_act {d['hidden_act']!r}: only silu is implemented")
    kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
    if "in_channels" in d:  # transformers' name; the checkpoints' config.json says in_chans
      kw["in_chans"] = d["in_channels"]
    rope = d.get("rope_parameters") or {}
    if "rope_theta" in rope:
      kw["rope_theta"] = rope["rope_theta"]
    for k in ("patch_size", "temporal_patch_size"):
      if isinstance(kw.get(k), (list, tuple)):
        kw[k] = int(kw[k][0])
    return cls(**kw)


# ----------------------------------------------------------- host-side metadata ---

def _grids(grid_thw) -> tuple[tuple[int, int, int], ...]:
  g = np.asarray(grid_thw)  # a traced grid fails here: grids must be static
  if g.ndim != 2 or g.shape[1] != 3:
    raise ValueError(f"grid_thw must be [n, 3], got shape {g.shape}")
  return tuple((int(t), int(h), int(w)) for t, h, w in g)


def _check_merge(grids, m: int) -> None:
  for t, h, w in grids:
    if t < 1 or h % m or w % m or h < m or w < m:
      raise ValueError(f"grid (t={t}, h={h}, w={w}): h and w must be positive multiples "
                       f"of spatial_merge_size={m}, t positive")


def get_window_index(grid_thw, *, window_size: int = 112, spatial_merge_size: int = 2,
                     patch_size: int = 14) -> tuple[np.ndarray, np.ndarray]:
  """(window_index [U], cu_window_seqlens [windows + 1]) as transformers'
  `get_vision_window_index`: merge units reordered per temporal grid, then window by
  window (row-major), then row-major inside a window; windows are ``window_size`` pixels
  square, cut from the top-left so the last row / column may be partial. The boundaries
  are in patches. transformers pads divisible grids with an empty window and drops it
  again (`unique_consecutive`); a ceil-divided window grid has no empty window at all."""
  m = spatial_merge_size
  ws = window_size // m // patch_size
  if ws < 1:
    raise ValueError(f"window_size={window_size} is under one merge unit")
  grids = _grids(grid_thw)
  _check_merge(grids, m)
  index, cu, offset = [], [np.zeros(1, np.int64)], 0
  for t, h, w in grids:
    lh, lw = h // m, w // m
    nh, nw = -(-lh // ws), -(-lw // ws)
    idx = np.full((t, nh * ws, nw * ws), -1, np.int64)
    idx[:, :lh, :lw] = np.arange(t * lh * lw).reshape(t, lh, lw) + offset
    idx_W = idx.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4).reshape(-1, ws * ws)
    valid = idx_W >= 0
    index.append(idx_W[valid])  # row-major over (window, slot): window-major order
    cu.append(cu[-1][-1] + np.cumsum(valid.sum(1)) * m * m)
    offset += t * lh * lw
  return np.concatenate(index), np.concatenate(cu).astype(np.int32)


def get_cu_seqlens(grid_thw) -> np.ndarray:
  """Full-attention boundaries [frames + 1] in patches: one segment per temporal grid
  (a frame pair), not per video (spec §0.8)."""
  lens = [h * w for t, h, w in _grids(grid_thw) for _ in range(t)]
  return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def rope_positions(grid_thw, spatial_merge_size: int = 2) -> np.ndarray:
  """[P, 2] (row, column) of each patch in patch units, in the processor's order (m x m
  blocks row-major, patches row-major inside a block, frames sharing positions)."""
  m, out = spatial_merge_size, []
  for t, h, w in _grids(grid_thw):
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    out.append(np.tile(np.stack([block(rows), block(cols)], -1), (t, 1)))
  return np.concatenate(out).astype(np.int32)


@struct.dataclass
class Segments:
  """Block-diagonal attention over the (window-permuted) packed sequence, whose segments
  are contiguous. ``ids_P``: each patch's segment (the dense mask is ``ids == ids``);
  ``gather_GL`` / ``valid_GL``: the patches of segment g in slots 0..len-1 (padding slots
  point at patch 0 and are masked); ``scatter_P``: patch p's flat slot ``g * L + l``."""
  ids_P: np.ndarray
  gather_GL: np.ndarray
  valid_GL: np.ndarray
  scatter_P: np.ndarray

  @classmethod
  def from_cu_seqlens(cls, cu: np.ndarray) -> Segments:
    lens = np.diff(cu)
    G, L, P = len(lens), int(lens.max()), int(cu[-1])
    ids = np.repeat(np.arange(G), lens)
    slot = np.arange(P) - cu[:-1][ids]
    gather = np.zeros((G, L), np.int32)
    gather[ids, slot] = np.arange(P)
    valid = np.zeros((G, L), bool)
    valid[ids, slot] = True
    return cls(ids.astype(np.int32), gather, valid, (ids * L + slot).astype(np.int32))


@struct.dataclass
class VisionPlan:
  """Everything the tower needs from ``grid_thw``: the merge-unit permutation into window
  order and back, the RoPE positions [P, 2] already in window order, and the segments of
  the full-attention (per frame) and window blocks."""
  window_index_U: np.ndarray
  reverse_U: np.ndarray
  pos_P2: np.ndarray
  full: Segments
  window: Segments


@functools.lru_cache(maxsize=256)
def _plan(grids: tuple, window_size: int, m: int, patch_size: int) -> VisionPlan:
  widx_U, cu_win = get_window_index(grids, window_size=window_size, spatial_merge_size=m,
                                    patch_size=patch_size)
  U = len(widx_U)
  pos_P2 = rope_positions(grids, m).reshape(U, m * m, 2)[widx_U].reshape(-1, 2)
  return VisionPlan(window_index_U=widx_U.astype(np.int32),
                    reverse_U=np.argsort(widx_U).astype(np.int32), pos_P2=pos_P2,
                    full=Segments.from_cu_seqlens(get_cu_seqlens(grids)),
                    window=Segments.from_cu_seqlens(cu_win))


def make_plan(grid_thw, cfg: QwenVisionConfig) -> VisionPlan:
  """The host-side plan for ``grid_thw`` (cached per grid tuple); pass it to
  `QwenVisionTower.encode`, e.g. as an argument of a jitted function."""
  return _plan(_grids(grid_thw), cfg.window_size, cfg.spatial_merge_size, cfg.patch_size)


# ----------------------------------------------------------------------- model ---

def rope_cos_sin(pos_P2: jax.Array, head_dim: int, theta: float):
  """float32 (cos, sin) [P, E] of the axial 2-D RoPE: E/4 frequencies of the row, then
  E/4 of the column, the whole repeated twice (rotate-half layout)."""
  half = head_dim // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, half, 2, dtype=jnp.float32) / half))
  f_P2F = jnp.asarray(pos_P2).astype(jnp.float32)[..., None] * inv_freq
  f_PF = f_P2F.reshape(f_P2F.shape[0], half)
  emb_PE = jnp.concatenate([f_PF, f_PF], axis=-1)
  return jnp.cos(emb_PE), jnp.sin(emb_PE)


def apply_rope(x_PHE: jax.Array, cos_PE: jax.Array, sin_PE: jax.Array) -> jax.Array:
  # In float32 whatever the activation dtype, as transformers' vision RoPE (spec §0.9).
  x = x_PHE.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rot = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos_PE[:, None] + rot * sin_PE[:, None]).astype(x_PHE.dtype)


def segment_attention(q_PHE, k_PHE, v_PHE, segs: Segments, scale: float, mode: str):
  """Non-causal softmax attention within segments. 'segments': gather each segment into a
  padded row [G, L] and attend per row (cost G·L², exact: padding keys are masked);
  'dense': one [P, P] mask over the packed sequence (reference; quadratic in P)."""
  if mode == "dense":
    ids_P = jnp.asarray(segs.ids_P)
    mask_1PP = (ids_P[:, None] == ids_P[None, :])[None]
    return layers.attention(q_PHE[None], k_PHE[None], v_PHE[None], mask_1PP, scale, "xla")[0]
  if mode != "segments":
    raise ValueError(f"attention mode {mode!r}; expected one of {ATTENTION_MODES}")
  gather_GL, valid_GL = jnp.asarray(segs.gather_GL), jnp.asarray(segs.valid_GL)
  G, L = gather_GL.shape
  mask_GLL = jnp.broadcast_to(valid_GL[:, None, :], (G, L, L))
  out_GLHE = layers.attention(q_PHE[gather_GL], k_PHE[gather_GL], v_PHE[gather_GL], mask_GLL,
                              scale, "xla")
  return out_GLHE.reshape(G * L, *out_GLHE.shape[2:])[jnp.asarray(segs.scatter_P)]


class QwenVisionAttention(nnx.Module):
  """transformers' fused ``qkv`` kept as three Dense layers (so each shards by heads)."""

  def __init__(self, cfg: QwenVisionConfig, *, dtype, param_dtype, rngs):
    D = cfg.hidden_size
    kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = layers.Dense(D, D, ("vit_embed", "vit_heads"), **kw)
    self.k = layers.Dense(D, D, ("vit_embed", "vit_heads"), **kw)
    self.v = layers.Dense(D, D, ("vit_embed", "vit_heads"), **kw)
    self.proj = layers.Dense(D, D, ("vit_heads", "vit_embed"), **kw)
    self.num_heads = cfg.num_heads

  def __call__(self, x_PD, cos_PE, sin_PE, segs: Segments, mode: str) -> jax.Array:
    P, D = x_PD.shape
    E = D // self.num_heads
    split = lambda t: t.reshape(P, self.num_heads, E)
    q_PHE = apply_rope(split(self.q(x_PD)), cos_PE, sin_PE)
    k_PHE = apply_rope(split(self.k(x_PD)), cos_PE, sin_PE)
    out_PHE = segment_attention(q_PHE, k_PHE, split(self.v(x_PD)), segs, E ** -0.5, mode)
    return self.proj(out_PHE.reshape(P, D))


class QwenVisionMLP(nnx.Module):
  """SwiGLU with biases on all three projections (unlike the LLM's MLP)."""

  def __init__(self, cfg: QwenVisionConfig, *, dtype, param_dtype, rngs):
    D, F = cfg.hidden_size, cfg.intermediate_size
    kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = layers.Dense(D, F, ("vit_embed", "vit_mlp"), **kw)
    self.up = layers.Dense(D, F, ("vit_embed", "vit_mlp"), **kw)
    self.down = layers.Dense(F, D, ("vit_mlp", "vit_embed"), **kw)

  def __call__(self, x_PD: jax.Array) -> jax.Array:
    return self.down(jax.nn.silu(self.gate(x_PD)) * self.up(x_PD))


class QwenVisionBlock(nnx.Module):
  """Pre-norm: x += attn(norm1 x); x += mlp(norm2 x)."""

  def __init__(self, cfg: QwenVisionConfig, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    # layers.RMSNorm: float32 normalise, cast to `dtype`, then scale, as transformers
    # (which casts to the input dtype: the same, the residual stream being in `dtype`).
    self.norm1 = layers.RMSNorm(cfg.hidden_size, NORM_EPS, "norm", **kw)
    self.norm2 = layers.RMSNorm(cfg.hidden_size, NORM_EPS, "norm", **kw)
    self.attn = QwenVisionAttention(cfg, rngs=rngs, **kw)
    self.mlp = QwenVisionMLP(cfg, rngs=rngs, **kw)

  def __call__(self, x_PD, cos_PE, sin_PE, segs: Segments, mode: str) -> jax.Array:
    x_PD = x_PD + self.attn(self.norm1(x_PD), cos_PE, sin_PE, segs, mode)
    return x_PD + self.mlp(self.norm2(x_PD))


class QwenPatchMerger(nnx.Module):
  """RMSNorm -> concat each merge unit's m² patches -> Linear -> exact GELU -> Linear."""

  def __init__(self, cfg: QwenVisionConfig, *, dtype, param_dtype, rngs):
    D, K = cfg.hidden_size, cfg.hidden_size * cfg.merge_unit
    kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ln_q = layers.RMSNorm(D, NORM_EPS, "norm", dtype=dtype, param_dtype=param_dtype)
    # Axes as InternVL's `mlp1` projector: each matrix pairs a tensor with an fsdp axis.
    self.fc1 = layers.Dense(K, K, ("proj_in", "embed"), **kw)
    self.fc2 = layers.Dense(K, cfg.out_hidden_size, ("mlp", "embed"), **kw)
    self.merge_unit = cfg.merge_unit

  def __call__(self, x_PD: jax.Array) -> jax.Array:
    P, D = x_PD.shape
    x_UK = self.ln_q(x_PD).reshape(P // self.merge_unit, self.merge_unit * D)
    return self.fc2(layers.gelu(self.fc1(x_UK)))  # layers.gelu is the erf form


class QwenVisionTower(nnx.Module):
  """transformers' `Qwen2_5_VisionTransformerPretrainedModel`: processor patches
  [P, C] -> merged tokens [U, O] in processor (t, row, column) order.

  ``attention``: 'segments' (default; per-segment gather, G·L² work) or 'dense' (one
  masked [P, P] attention over the packed sequence); both exact."""

  def __init__(self, cfg: QwenVisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, attention: str = "segments"):
    if attention not in ATTENTION_MODES:
      raise ValueError(f"attention={attention!r}; expected one of {ATTENTION_MODES}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # Conv3d with kernel = stride = (T, p, p) and no bias == a matmul over the flattened
    # patch; the processor's (C, T, p, p) flatten order is the conv weight's.
    self.patch_embed = layers.param(rngs, (cfg.patch_dim, cfg.hidden_size), param_dtype,
                                    (None, "vit_embed"))
    self.blocks = nnx.List([QwenVisionBlock(cfg, **kw) for _ in range(cfg.depth)])
    self.merger = QwenPatchMerger(cfg, **kw)
    self.cfg, self.dtype, self.attention = cfg, dtype, attention

  def __call__(self, pixel_values_PC: jax.Array, grid_thw) -> jax.Array:
    """``grid_thw`` must be concrete (numpy, a list, a concrete array): under `jit`, make
    it static or call `encode` with a `make_plan` plan."""
    return self.encode(pixel_values_PC, make_plan(grid_thw, self.cfg))

  def encode(self, pixel_values_PC: jax.Array, plan: VisionPlan) -> jax.Array:
    cfg, dt = self.cfg, self.dtype
    P, C = pixel_values_PC.shape
    U = plan.window_index_U.shape[0]
    if C != cfg.patch_dim or P != U * cfg.merge_unit:
      raise ValueError(f"pixel values {pixel_values_PC.shape} do not match the grids: "
                       f"expected [{U * cfg.merge_unit}, {cfg.patch_dim}]")
    x_PD = jnp.matmul(pixel_values_PC.astype(dt), self.patch_embed[...].astype(dt))
    D = x_PD.shape[-1]
    # Window order: each window (and each frame) becomes a contiguous run of patches.
    x_PD = x_PD.reshape(U, cfg.merge_unit, D)[jnp.asarray(plan.window_index_U)].reshape(P, D)
    cos_PE, sin_PE = rope_cos_sin(plan.pos_P2, cfg.head_dim, cfg.rope_theta)
    full = frozenset(cfg.fullatt_block_indexes)
    for i, block in enumerate(self.blocks):
      segs = plan.full if i in full else plan.window
      x_PD = block(x_PD, cos_PE, sin_PE, segs, self.attention)
    # A merge unit's patches stay adjacent in window order, so merge first, then restore
    # the processor order.
    return self.merger(x_PD)[jnp.asarray(plan.reverse_U)]
