"""Small NNX building blocks shared by the ViT and the decoder.

Every parameter carries logical axis names (``out_sharding`` metadata); placement on
a mesh is decided by `sharding.py`, never here. Kernels are stored ``[in, out]``.
Legend: B batch, T tokens, D width, I in-features, O out-features; in attention S keys,
H query / K KV heads (h = H/K), E head dim, and for packed groups P prompt tokens, G
groups of C tokens, L = P + G*C.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from vqathinker_jax.model import attention_kernels, sharding

INIT_STD = 0.02


def param(rngs: nnx.Rngs | None, shape, dtype, axes, init="normal") -> nnx.Param:
  """A Param initialised as ``init``: 'normal', 'zeros', 'ones', a constant, or a
  callable ``(key, shape) -> float32 array``."""
  if callable(init):
    value = init(rngs.params(), shape)
  elif init == "normal":
    value = INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "zeros":
    value = jnp.zeros(shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.full(shape, float(init), jnp.float32)
  # eager_sharding=False: placement happens once, under jit, from the logical names.
  return nnx.Param(value.astype(dtype), out_sharding=tuple(axes), eager_sharding=False)


class Dense(nnx.Module):
  """``y = x @ kernel (+ bias)`` computed in ``dtype``."""

  def __init__(self, in_features: int, out_features: int, axes: tuple, *, bias: bool,
               dtype, param_dtype, rngs: nnx.Rngs, kernel_init="normal"):
    self.kernel = param(rngs, (in_features, out_features), param_dtype, axes, kernel_init)
    self.bias = param(rngs, (out_features,), param_dtype, axes[1:], "zeros") if bias else None
    self.dtype = dtype

  def __call__(self, x_BTI: jax.Array) -> jax.Array:
    y_BTO = jnp.matmul(x_BTI.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y_BTO = y_BTO + self.bias[...].astype(self.dtype)
    return y_BTO


class LayerNorm(nnx.Module):
  """LayerNorm with exact (two-pass) variance in float32, as PyTorch computes it."""

  def __init__(self, dim: int, eps: float, axis_name: str, *, dtype, param_dtype):
    self.scale = param(None, (dim,), param_dtype, (axis_name,), "ones")
    self.bias = param(None, (dim,), param_dtype, (axis_name,), "zeros")
    self.eps, self.dtype = eps, dtype

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    x = x_BTD.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm as Qwen2/InternViT-6B: normalise in float32, cast, then scale."""

  def __init__(self, dim: int, eps: float, axis_name: str, *, dtype, param_dtype):
    self.scale = param(None, (dim,), param_dtype, (axis_name,), "ones")
    self.eps, self.dtype = eps, dtype

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    x = x_BTD.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
    return self.scale[...].astype(self.dtype) * y.astype(self.dtype)


NORM_TYPES = ("layer_norm", "rms_norm")


def make_norm(kind: str, dim: int, eps: float, axis_name: str, *, dtype, param_dtype):
  if kind == "layer_norm":
    return LayerNorm(dim, eps, axis_name, dtype=dtype, param_dtype=param_dtype)
  if kind == "rms_norm":
    return RMSNorm(dim, eps, axis_name, dtype=dtype, param_dtype=param_dtype)
  raise ValueError(f"unknown norm_type {kind!r}; expected one of {NORM_TYPES}")


def gelu(x: jax.Array) -> jax.Array:
  # Exact (erf) GELU: PyTorch's default; Flax's default is the tanh approximation.
  return jax.nn.gelu(x, approximate=False)


@struct.dataclass
class PrefixGroupMask:
  """The attention pattern of a packed `[prompt | c_1 | ... | c_G]` row (GRPO's log-prob
  pass), stated by its structure instead of an [L, L] array: prompt tokens attend
  causally within the prompt, each completion token to the whole prompt and causally to
  its own completion, never to another completion. Padding keys (``prompt_valid_BP``
  False) are masked; a padding query sees itself, so no softmax row is empty.

  `attention` computes just the blocks that can be non-zero (P^2 + G.C.(P + C) scores
  instead of L^2), so neither the [L, L] mask nor the masked-out scores between
  completions are ever built.
  """
  prompt_valid_BP: jax.Array
  groups: int = struct.field(pytree_node=False)
  group_len: int = struct.field(pytree_node=False)

  def dense(self) -> jax.Array:
    """The same pattern as a boolean [B, L, L] array (reference and tests)."""
    B, P = self.prompt_valid_BP.shape
    G, C = self.groups, self.group_len
    L = P + G * C
    seg_L = jnp.concatenate([jnp.full((P,), -1), jnp.repeat(jnp.arange(G), C)])
    is_prompt_L = seg_L < 0
    key_valid_BL = jnp.concatenate([self.prompt_valid_BP.astype(bool),
                                    jnp.ones((B, G * C), bool)], axis=1)
    i, j = jnp.arange(L)[:, None], jnp.arange(L)[None, :]
    causal_in_segment = (seg_L[:, None] == seg_L[None, :]) & (j <= i)
    completion_sees_prompt = ~is_prompt_L[:, None] & is_prompt_L[None, :]
    return (((causal_in_segment | completion_sees_prompt)[None] & key_valid_BL[:, None, :])
            | (i == j)[None])


@struct.dataclass
class CausalMask:
  """Causal self-attention over valid keys (T = S): query t sees the keys s <= t with
  ``valid_BT[s]``, the pattern `llm.causal_mask` builds as an array, stated by its
  structure so that a kernel skips the blocks above the diagonal. cuDNN reads the padding
  as lengths: valid tokens must come first in each row (right padding, as every caller's)."""
  valid_BT: jax.Array

  def dense(self) -> jax.Array:
    """The same pattern as a boolean [B, T, T] array."""
    T = self.valid_BT.shape[1]
    return jnp.tril(jnp.ones((T, T), bool))[None] & self.valid_BT.astype(bool)[:, None, :]


def attention(q_BTHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array,
              mask_BTS: jax.Array | CausalMask | PrefixGroupMask | None, scale: float,
              implementation: str = "xla") -> jax.Array:
  """Softmax attention with grouped KV heads (H a multiple of K); float32 softmax.
  ``mask_BTS``: a boolean [B, T, S] array, a `CausalMask` or `PrefixGroupMask` (T = S),
  or None. ``implementation`` (`attention_kernels.IMPLEMENTATIONS`): XLA, or for the
  structured masks and None a memory-efficient kernel (splash, cuDNN; 'auto' by
  platform); array masks always take XLA. The kernels agree with XLA on every row but
  padded prompt queries of a `PrefixGroupMask` (see `attention_kernels`)."""
  structured = isinstance(mask_BTS, (CausalMask, PrefixGroupMask))
  T, S = q_BTHE.shape[1], k_BSKE.shape[1]
  if structured and S != T:
    raise ValueError(f"a {type(mask_BTS).__name__} is self-attention: {T} queries but "
                     f"{S} keys")
  if structured or (mask_BTS is None and S == T):
    impl = attention_kernels.resolve(implementation, q_BTHE.dtype, q_BTHE.shape[-1])
    if impl != "xla":
      return _kernel_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS, scale, impl)
  if isinstance(mask_BTS, PrefixGroupMask):
    return _prefix_group_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS, scale)
  if isinstance(mask_BTS, CausalMask):
    mask_BTS = mask_BTS.dense()
  B, T, H, E = q_BTHE.shape
  K = k_BSKE.shape[2]
  # Query heads grouped per KV head ([B, T, K, G, E]) only when there are groups: a size-1
  # group axis (H = K: the ViTs) made XLA:CPU's attention forward + backward 1.5x slower.
  grouped = H != K
  q = q_BTHE.reshape(B, T, K, H // K, E) if grouped else q_BTHE
  q_axes, logit_axes = ("btkge", "bkgts") if grouped else ("btke", "bkts")
  logits = jnp.einsum(f"{q_axes},bske->{logit_axes}", q, k_BSKE,
                      preferred_element_type=jnp.float32) * scale
  if mask_BTS is not None:
    mask = mask_BTS[:, None, None] if grouped else mask_BTS[:, None]
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  # The softmax normalised after the product with V (on [.., T, E], not [.., T, S]): the
  # ViT's attention forward + backward ran 1.4x faster on XLA:CPU and held 30 % less
  # memory than with jax.nn.softmax. The shift by the row max does not change the result.
  w = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
  out = jnp.einsum(f"{logit_axes},bske->{q_axes}", w.astype(v_BSKE.dtype), v_BSKE,
                   preferred_element_type=jnp.float32)
  out = out / jnp.moveaxis(jnp.sum(w, axis=-1), -1, 1)[..., None]
  return out.astype(v_BSKE.dtype).reshape(B, T, H, E)


def _kernel_pattern(mask, B: int, T: int):
  """(valid keys [B, T] or None, the pattern's keywords) of ``mask`` (a `CausalMask`, a
  `PrefixGroupMask` or None) for `attention_kernels`."""
  if isinstance(mask, PrefixGroupMask):
    P = mask.prompt_valid_BP.shape[1]
    valid_BT = jnp.concatenate([mask.prompt_valid_BP.astype(bool), jnp.ones((B, T - P), bool)], 1)
    return valid_BT, dict(causal=True, groups=(mask.groups, mask.group_len))
  return (None if mask is None else mask.valid_BT), dict(causal=mask is not None, groups=None)


def _kernel_attention(q_BTHE, k_BSKE, v_BSKE, mask, scale: float, impl: str):
  """`attention` by `attention_kernels`' splash or cuDNN (``impl``), ``mask`` a
  `CausalMask`, a `PrefixGroupMask` or None."""
  valid_BS, kw = _kernel_pattern(mask, *q_BTHE.shape[:2])
  if impl == "splash":
    interpret = attention_kernels.target()[0] != "tpu"
    return attention_kernels.splash_attention(q_BTHE, k_BSKE, v_BSKE, valid_BS, scale,
                                              interpret=interpret, **kw)
  return attention_kernels.cudnn_attention(q_BTHE, k_BSKE, v_BSKE, valid_BS, scale, **kw)


def _prefix_group_attention(q_BLHE, k_BLKE, v_BLKE, m: PrefixGroupMask, scale: float):
  """`attention` under a `PrefixGroupMask`, block by block: the prompt's causal block,
  then each completion over [prompt keys | its own keys] with one softmax across both
  (so the result is that of the dense mask)."""
  B, L, H, E = q_BLHE.shape
  K = k_BLKE.shape[2]
  h, (P, G, C) = H // K, (m.prompt_valid_BP.shape[1], m.groups, m.group_len)
  assert L == P + G * C, (L, P, G, C)
  neg = jnp.finfo(jnp.float32).min
  f32 = dict(preferred_element_type=jnp.float32)
  valid_BP = m.prompt_valid_BP.astype(bool)
  q_BLKhE = q_BLHE.reshape(B, L, K, h, E)
  q_BPKhE, q_BGCKhE = q_BLKhE[:, :P], q_BLKhE[:, P:].reshape(B, G, C, K, h, E)
  k_BPKE, v_BPKE = k_BLKE[:, :P], v_BLKE[:, :P]
  k_BGCKE = k_BLKE[:, P:].reshape(B, G, C, K, E)
  v_BGCKE = v_BLKE[:, P:].reshape(B, G, C, K, E)

  i, j = jnp.arange(P)[:, None], jnp.arange(P)[None, :]
  mask_BPP = ((j <= i)[None] & valid_BP[:, None, :]) | (i == j)[None]
  s_BKhPP = jnp.einsum("bpkhe,bske->bkhps", q_BPKhE, k_BPKE, **f32) * scale
  s_BKhPP = jnp.where(mask_BPP[:, None, None], s_BKhPP, neg)
  p_BKhPP = jax.nn.softmax(s_BKhPP, axis=-1).astype(v_BLKE.dtype)
  out_BPKhE = jnp.einsum("bkhps,bske->bpkhe", p_BKhPP, v_BPKE)

  s_BKhGCP = jnp.einsum("bgckhe,bpke->bkhgcp", q_BGCKhE, k_BPKE, **f32) * scale
  s_BKhGCP = jnp.where(valid_BP[:, None, None, None, None], s_BKhGCP, neg)
  s_BKhGCC = jnp.einsum("bgckhe,bgske->bkhgcs", q_BGCKhE, k_BGCKE, **f32) * scale
  s_BKhGCC = jnp.where(jnp.tril(jnp.ones((C, C), bool)), s_BKhGCC, neg)
  p_BKhGCS = jax.nn.softmax(jnp.concatenate([s_BKhGCP, s_BKhGCC], -1), axis=-1)
  p_BKhGCS = p_BKhGCS.astype(v_BLKE.dtype)
  out_BGCKhE = (jnp.einsum("bkhgcp,bpke->bgckhe", p_BKhGCS[..., :P], v_BPKE)
                + jnp.einsum("bkhgcs,bgske->bgckhe", p_BKhGCS[..., P:], v_BGCKE))
  return jnp.concatenate([out_BPKhE.reshape(B, P, H, E),
                          out_BGCKhE.reshape(B, G * C, H, E)], axis=1)


def shared_prefix_attention(q_NHE, prefix_k_BKPE, prefix_v_BKPE, prefix_valid_BP,
                            k_NKCE, v_NKCE, valid_C, scale: float) -> jax.Array:
  """One query per row over two key blocks: its group's shared prefix (rows
  video-major, N = B*G; prefix keys stored once per group) and the row's own keys, with
  one float32 softmax across both, so the result [N, H, E] is attention over the
  concatenation. Masks: ``prefix_valid_BP`` per group, ``valid_C`` for every row."""
  N, H, E = q_NHE.shape
  B, K, P, _ = prefix_k_BKPE.shape
  dt, neg = q_NHE.dtype, jnp.finfo(jnp.float32).min
  groups = lambda x_N: sharding.constrain_batch(x_N.reshape(B, -1, *x_N.shape[1:]))
  rows = lambda x_BG: sharding.constrain_batch(x_BG.reshape(-1, *x_BG.shape[2:]))
  q_NKhE = q_NHE.reshape(N, K, H // K, E)
  s_BGKhP = jnp.einsum("bgkhe,bkpe->bgkhp", groups(q_NKhE), prefix_k_BKPE.astype(dt),
                       preferred_element_type=jnp.float32)
  s_BGKhP = jnp.where(prefix_valid_BP[:, None, None, None], s_BGKhP, neg)
  s_NKhC = jnp.einsum("nkhe,nkce->nkhc", q_NKhE, k_NKCE.astype(dt),
                      preferred_element_type=jnp.float32)
  s_NKhC = jnp.where(valid_C, s_NKhC, neg)
  s_NKhS = jnp.concatenate([rows(s_BGKhP), s_NKhC], axis=-1) * scale
  p_NKhS = jax.nn.softmax(s_NKhS, axis=-1).astype(dt)
  out_BGKhE = jnp.einsum("bgkhp,bkpe->bgkhe", groups(p_NKhS[..., :P]), prefix_v_BKPE.astype(dt))
  out_NKhE = rows(out_BGKhE) + jnp.einsum("nkhc,nkce->nkhe", p_NKhS[..., P:], v_NKCE.astype(dt))
  return out_NKhE.reshape(N, H, E)


def merge_visual(x_BTD: jax.Array, is_visual_BT: jax.Array, feats_MD: jax.Array) -> jax.Array:
  """Scatter visual tokens into the placeholder positions, in order (row-major)."""
  B, T, D = x_BTD.shape
  flat = is_visual_BT.reshape(-1)
  idx = jnp.clip(jnp.cumsum(flat) - 1, 0, feats_MD.shape[0] - 1)
  gathered = jnp.take(feats_MD.astype(x_BTD.dtype), idx, axis=0)
  merged = jnp.where(flat[:, None], gathered, x_BTD.reshape(B * T, D)).reshape(B, T, D)
  return sharding.constrain_batch(merged)  # the batch-merging reshape (InternVL.visual_tokens)
