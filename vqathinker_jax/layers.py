"""Small NNX building blocks shared by the ViT and the decoder.

Every parameter carries logical axis names (``out_sharding`` metadata); placement on
a mesh is decided by `sharding.py`, never here. Kernels are stored ``[in, out]``.
Legend: B batch, T tokens, D width, I in-features, O out-features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

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


def make_norm(kind: str, dim: int, eps: float, axis_name: str, *, dtype, param_dtype):
  if kind == "layer_norm":
    return LayerNorm(dim, eps, axis_name, dtype=dtype, param_dtype=param_dtype)
  if kind == "rms_norm":
    return RMSNorm(dim, eps, axis_name, dtype=dtype, param_dtype=param_dtype)
  raise ValueError(f"unknown norm_type {kind!r}; expected 'layer_norm' or 'rms_norm'")


def gelu(x: jax.Array) -> jax.Array:
  # Exact (erf) GELU: PyTorch's default; Flax's default is the tanh approximation.
  return jax.nn.gelu(x, approximate=False)


def attention(q_BTHE: jax.Array, k_BSKE: jax.Array, v_BSKE: jax.Array,
              mask_BTS: jax.Array | None, scale: float) -> jax.Array:
  """Softmax attention with grouped KV heads (H a multiple of K); float32 softmax."""
  B, T, H, E = q_BTHE.shape
  K = k_BSKE.shape[2]
  q_BTKGE = q_BTHE.reshape(B, T, K, H // K, E)
  logits_BKGTS = jnp.einsum("btkge,bske->bkgts", q_BTKGE, k_BSKE,
                            preferred_element_type=jnp.float32) * scale
  if mask_BTS is not None:
    logits_BKGTS = jnp.where(mask_BTS[:, None, None], logits_BKGTS,
                             jnp.finfo(jnp.float32).min)
  probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(v_BSKE.dtype)
  out_BTKGE = jnp.einsum("bkgts,bske->btkge", probs_BKGTS, v_BSKE)
  return out_BTKGE.reshape(B, T, H, E)
