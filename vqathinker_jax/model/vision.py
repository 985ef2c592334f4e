"""InternViT encoder, pixel shuffle and the `mlp1` projector (channels-last).

Stochastic depth (drop-path) runs only when a caller passes ``drop_key`` (the GRPO rollout
and update, docs/method.md §4); without one every forward is the deterministic one.
Legend: N frames, H/W pixels, h/w patch grid, P patches, C ViT width, D LLM width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqathinker_jax.model import layers, llm
from vqathinker_jax.model.config import DTYPES, ModelConfig, VisionConfig


@functools.lru_cache(maxsize=None)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] matrix of PyTorch's bicubic resize (align_corners=False, A=-0.75).

  Source coordinate ``(dst + 0.5) * in / out - 0.5`` (not clamped: cubic), four taps
  clamped to the border. `jax.image.resize('cubic')` uses a different kernel.
  """
  a = -0.75

  def kernel(x):
    x = abs(x)
    if x <= 1:
      return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
      return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0

  m = np.zeros((out_size, in_size), np.float64)
  for dst in range(out_size):
    src = (dst + 0.5) * in_size / out_size - 0.5
    base = int(np.floor(src))
    t = src - base
    for tap, w in zip(range(base - 1, base + 3), (kernel(1 + t), kernel(t), kernel(1 - t),
                                                   kernel(2 - t))):
      m[dst, min(max(tap, 0), in_size - 1)] += w
  return m.astype(np.float32)


@jax.custom_vjp
def patch_conv(pix_NHWC: jax.Array, kernel_ppIC: jax.Array) -> jax.Array:
  """The stride-p p x p patch convolution [N, H/p, W/p, C]. Forward: XLA's convolution (as
  a matmul over flattened patches, the patch gather is a 6-d transpose that cost XLA's CPU
  backend 2.5x the convolution). Backward: both cotangents as matmuls over the patches
  (XLA:CPU ran the kernel gradient as a generic convolution: 46 s of a 1B-shaped update's
  188 s, benchmarks/results/profile_update_internvl3_1b.json)."""
  return _conv(pix_NHWC, kernel_ppIC)


def _conv(pix_NHWC, kernel_ppIC):
  p = kernel_ppIC.shape[0]
  return jax.lax.conv_general_dilated(pix_NHWC, kernel_ppIC, (p, p), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patch_conv_fwd(pix_NHWC, kernel_ppIC):
  return _conv(pix_NHWC, kernel_ppIC), (pix_NHWC, kernel_ppIC)


def _patch_conv_bwd(res, g_NhwC):
  pix_NHWC, kernel_ppIC = res
  N, H, W, I = pix_NHWC.shape
  p = kernel_ppIC.shape[0]
  patches = pix_NHWC.reshape(N, H // p, p, W // p, p, I)  # n h a w b i
  d_kernel = jnp.einsum("nhawbi,nhwo->abio", patches, g_NhwC.astype(pix_NHWC.dtype))
  d_pix = jnp.einsum("nhwo,abio->nhawbi", g_NhwC, kernel_ppIC).reshape(N, H, W, I)
  return d_pix.astype(pix_NHWC.dtype), d_kernel.astype(kernel_ppIC.dtype)


patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


def resize_pos_embed(pos_hwC: jax.Array, out_h: int, out_w: int) -> jax.Array:
  """Bicubic resize of the position grid, in float32 (identity at the trained size)."""
  in_h, in_w, _ = pos_hwC.shape
  if (in_h, in_w) == (out_h, out_w):
    return pos_hwC
  mh, mw = bicubic_matrix(in_h, out_h), bicubic_matrix(in_w, out_w)
  return jnp.einsum("oi,ijc,pj->opc", mh, pos_hwC.astype(jnp.float32), mw,
                    precision=jax.lax.Precision.HIGHEST)


def pixel_shuffle(x_NhwC: jax.Array) -> jax.Array:
  """[N, h, w, C] -> [N, h/2 * w/2, 4C]; token (i, j) = patches (2i,2j),(2i,2j+1),(2i+1,2j),(2i+1,2j+1)."""
  N, h, w, C = x_NhwC.shape
  if h % 2 or w % 2:
    raise ValueError(f"pixel shuffle needs an even patch grid, got {h}x{w}")
  x = x_NhwC.reshape(N, h // 2, 2, w // 2, 2, C).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(N, (h // 2) * (w // 2), 4 * C)


def drop_path(branch_NPC: jax.Array, key: jax.Array, rate: float) -> jax.Array:
  """timm's `DropPath` on a residual branch: each sample (frame) is zeroed with
  probability ``rate`` and otherwise scaled by 1 / (1 - rate), in the branch's dtype (as
  timm's `random_tensor.div_(keep_prob)`), so the expected output is the branch."""
  keep = 1.0 - rate
  keep_N = jax.random.bernoulli(key, keep, (branch_NPC.shape[0],))
  scale_N = jnp.where(keep_N, 1.0 / keep, 0.0).astype(branch_NPC.dtype)
  return branch_NPC * scale_N[:, None, None]


class VisionAttention(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs, attention: str = "auto"):
    C = cfg.hidden_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = layers.Dense(C, C, ("vit_embed", "vit_heads"), bias=cfg.qkv_bias, **kw)
    self.k = layers.Dense(C, C, ("vit_embed", "vit_heads"), bias=cfg.qkv_bias, **kw)
    self.v = layers.Dense(C, C, ("vit_embed", "vit_heads"), bias=cfg.qkv_bias, **kw)
    self.proj = layers.Dense(C, C, ("vit_heads", "vit_embed"), bias=True, **kw)
    if cfg.qk_norm:
      self.q_norm = layers.RMSNorm(C, cfg.layer_norm_eps, "norm", dtype=dtype, param_dtype=param_dtype)
      self.k_norm = layers.RMSNorm(C, cfg.layer_norm_eps, "norm", dtype=dtype, param_dtype=param_dtype)
    else:
      self.q_norm = self.k_norm = None
    self.num_heads, self.implementation = cfg.num_heads, attention

  def __call__(self, x_NPC: jax.Array) -> jax.Array:
    N, P, C = x_NPC.shape
    q, k, v = self.q(x_NPC), self.k(x_NPC), self.v(x_NPC)
    if self.q_norm is not None:  # over the full width, before the head split
      q, k = self.q_norm(q), self.k_norm(k)
    E = C // self.num_heads
    split = lambda t: t.reshape(N, P, self.num_heads, E)
    out = layers.attention(split(q), split(k), split(v), None, E ** -0.5, self.implementation)
    return self.proj(out.reshape(N, P, C))


class VisionBlock(nnx.Module):
  """Pre-norm block with layer-scale: x += ls1*attn(norm1 x); x += ls2*mlp(norm2 x); with
  a key and ``drop_rate`` > 0, each branch (after layer-scale) goes through `drop_path`."""

  def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs, attention: str = "auto",
               drop_rate: float = 0.0):
    C, F = cfg.hidden_size, cfg.intermediate_size
    norm = functools.partial(layers.make_norm, cfg.norm_type, C, cfg.layer_norm_eps, "norm",
                             dtype=dtype, param_dtype=param_dtype)
    self.norm1, self.norm2 = norm(), norm()
    self.attn = VisionAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                attention=attention)
    self.ls1 = layers.param(rngs, (C,), param_dtype, ("norm",), cfg.layer_scale_init)
    self.ls2 = layers.param(rngs, (C,), param_dtype, ("norm",), cfg.layer_scale_init)
    kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = layers.Dense(C, F, ("vit_embed", "vit_mlp"), **kw)
    self.fc2 = layers.Dense(F, C, ("vit_mlp", "vit_embed"), **kw)
    self.drop_rate = float(drop_rate)  # static: InternVL's nn.Identity() at rate 0

  def __call__(self, x_NPC: jax.Array, drop_key: jax.Array | None = None) -> jax.Array:
    dt = x_NPC.dtype
    if drop_key is None or self.drop_rate == 0.0:  # the deterministic block, op for op
      x_NPC = x_NPC + self.ls1[...].astype(dt) * self.attn(self.norm1(x_NPC))
      h = self.fc2(layers.gelu(self.fc1(self.norm2(x_NPC))))
      return x_NPC + self.ls2[...].astype(dt) * h
    # Two independent masks (drop_path1, drop_path2), as InternVisionEncoderLayer.
    key_attn, key_mlp = jax.random.split(drop_key)
    attn = self.ls1[...].astype(dt) * self.attn(self.norm1(x_NPC))
    x_NPC = x_NPC + drop_path(attn, key_attn, self.drop_rate)
    h = self.ls2[...].astype(dt) * self.fc2(layers.gelu(self.fc1(self.norm2(x_NPC))))
    return x_NPC + drop_path(h, key_mlp, self.drop_rate)


class InternViT(nnx.Module):
  """Patch embedding + CLS + learned positions + blocks. Returns patch tokens [N, P, C]."""

  def __init__(self, cfg: VisionConfig, feature_layer: int, *, dtype, param_dtype, rngs,
               attention: str = "auto", scan_layers: bool = False):
    C, p, g = cfg.hidden_size, cfg.patch_size, cfg.grid
    self.scan_layers = scan_layers
    self.patch_kernel = layers.param(rngs, (p, p, 3, C), param_dtype, (None, None, None, "vit_embed"))
    self.patch_bias = layers.param(rngs, (C,), param_dtype, ("vit_embed",), "zeros")
    self.cls = layers.param(rngs, (C,), param_dtype, ("vit_embed",))
    self.pos = layers.param(rngs, (1 + g * g, C), param_dtype, (None, "vit_embed"))
    # hidden_states = [embeddings, block 1, ..., block L]; keep only the blocks needed.
    num_states = cfg.num_layers + 1
    if not -num_states <= feature_layer < num_states:
      raise ValueError(f"vision_feature_layer={feature_layer} outside [-{num_states}, {num_states})")
    num_run = feature_layer % num_states
    rates = cfg.drop_path_rates()  # over all num_layers, even when fewer blocks run
    self.blocks = nnx.List([VisionBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                        attention=attention, drop_rate=rates[l])
                            for l in range(num_run)])
    # transformers' optional final norm is a LayerNorm whatever `norm_type` says.
    self.final_norm = (layers.LayerNorm(C, cfg.layer_norm_eps, "norm", dtype=dtype,
                                        param_dtype=param_dtype)
                       if cfg.final_norm and num_run == cfg.num_layers else None)
    self.cfg, self.dtype = cfg, dtype

  def __call__(self, pix_NHWC: jax.Array, drop_key: jax.Array | None = None,
               remat: str = "off") -> jax.Array:
    """Patch tokens [N, P, C]; ``drop_key``: drop-path masks (block l draws from
    `fold_in(drop_key, l)`), None for none; ``remat`` (`llm.REMAT_POLICIES`): what each
    block keeps for the gradient (at 448 px a block's scores alone are N x 16 x 1025^2)."""
    N, H, W, _ = pix_NHWC.shape
    p, C, g = self.cfg.patch_size, self.cfg.hidden_size, self.cfg.grid
    h, w = H // p, W // p
    x_NhwC = patch_conv(pix_NHWC.astype(self.dtype), self.patch_kernel[...].astype(self.dtype))
    x_NPC = x_NhwC.reshape(N, h * w, C) + self.patch_bias[...].astype(self.dtype)
    pos = self.pos[...]
    pos_patch = resize_pos_embed(pos[1:].reshape(g, g, C), h, w).reshape(h * w, C)
    cls_C = (self.cls[...] + pos[0]).astype(self.dtype)
    x_NPC = x_NPC + pos_patch.astype(self.dtype)
    x_NPC = jnp.concatenate([jnp.broadcast_to(cls_C, (N, 1, C)), x_NPC], axis=1)
    rates = {block.drop_rate for block in self.blocks}
    if self.scan_layers and self.blocks and (drop_key is None or len(rates) == 1):
      x_NPC = self._scan(x_NPC, drop_key, remat)
    else:
      call = lambda block, x, key: block(x, key)
      if remat != "off":
        call = nnx.remat(call, policy=llm.REMAT_POLICIES[remat])
      for l, block in enumerate(self.blocks):
        x_NPC = call(block, x_NPC, None if drop_key is None else jax.random.fold_in(drop_key, l))
    if self.final_norm is not None:
      x_NPC = self.final_norm(x_NPC)
    return x_NPC[:, 1:]  # the CLS token is dropped

  def _scan(self, x_NPC, drop_key, remat: str):
    """The block loop as one `lax.scan` over the blocks' weights stacked on a leading axis
    (as `llm.Qwen2._scan`). Besides compiling one block instead of L, it keeps remat
    effective on XLA:CPU, whose scheduler hoists an unrolled loop's recomputations (at
    448 px, 6 frames: 30 GB of update temporaries instead of 10). Used when the blocks
    differ in nothing but drop-path rates that no key activates (the merged block keeps
    the first's static rate)."""
    splits = [nnx.split(block) for block in self.blocks]
    graphdef = splits[0][0]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in splits))

    def block_fn(state, x_NPC, l):
      key = None if drop_key is None else jax.random.fold_in(drop_key, l)
      return nnx.merge(graphdef, state)(x_NPC, key)

    if remat != "off":
      block_fn = jax.checkpoint(block_fn, policy=llm.REMAT_POLICIES[remat], prevent_cse=False)
    x_NPC, _ = jax.lax.scan(lambda x, sl: (block_fn(sl[0], x, sl[1]), None), x_NPC,
                            (stacked, jnp.arange(len(self.blocks))))
    return x_NPC


class Projector(nnx.Module):
  """`mlp1`: LayerNorm(4C, eps 1e-5) -> Linear -> GELU -> Linear to the LLM width."""

  def __init__(self, c_in: int, d: int, *, dtype, param_dtype, rngs):
    self.norm = layers.LayerNorm(c_in, 1e-5, "norm", dtype=dtype, param_dtype=param_dtype)
    kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = layers.Dense(c_in, d, ("proj_in", "embed"), **kw)
    self.fc2 = layers.Dense(d, d, ("mlp", "embed"), **kw)

  def __call__(self, x_NPC: jax.Array) -> jax.Array:
    return self.fc2(layers.gelu(self.fc1(self.norm(x_NPC))))


class VisionTower(nnx.Module):
  """Frames -> visual tokens in LLM width: ViT, pixel shuffle, projector."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    dt, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    self.vit = InternViT(cfg.vision, cfg.vision_feature_layer, dtype=dt, param_dtype=pdt,
                         rngs=rngs, attention=cfg.attention, scan_layers=cfg.scan_layers)
    self.mlp1 = Projector(4 * cfg.vision.hidden_size, cfg.text.hidden_size, dtype=dt,
                          param_dtype=pdt, rngs=rngs)

  def __call__(self, pix_NHWC: jax.Array, drop_key: jax.Array | None = None,
               remat: str = "off") -> jax.Array:
    x_NPC = self.vit(pix_NHWC, drop_key, remat)
    N, H, W, _ = pix_NHWC.shape
    p = self.vit.cfg.patch_size
    return self.mlp1(pixel_shuffle(x_NPC.reshape(N, H // p, W // p, -1)))
