"""Qwen2/Qwen2.5 decoder with an explicit KV cache.

One decoder layer serves every pass: a plain causal pass, cached prefill, packed
block-masked sequences (`__call__`, with a mask over key slots) and the rollout's
one-token decode over a shared prompt block (`decode`).
Legend: B batch, T query tokens, S key slots, D width, H query heads, K KV heads,
E head dim, F MLP width, V vocabulary as stored (`TextConfig.padded_vocab_size`: ids past
`vocab_size` are padding, masked in `Qwen2.logits`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqathinker_jax.model import layers, mrope
from vqathinker_jax.model.config import DTYPES, TextConfig

Cache = list  # per layer {"k": [B, S, K, E], "v": [B, S, K, E]}
# Rematerialisation of each decoder layer in the backward pass (`Qwen2.__call__`'s remat):
# what its forward saves for the gradient. off: everything; full: only the layer's input
# (the whole layer is recomputed); save_dots: the matmul outputs (the rest is recomputed).
REMAT_POLICIES = {"off": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "save_dots": jax.checkpoint_policies.checkpoint_dots}


def init_cache(cfg: TextConfig, batch: int, length: int, dtype=jnp.float32) -> Cache:
  shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
          for _ in range(cfg.num_layers)]


def causal_mask(attention_mask_BT: jax.Array) -> jax.Array:
  """[B, T, T] mask: query t sees valid keys s <= t."""
  T = attention_mask_BT.shape[1]
  causal_TT = jnp.tril(jnp.ones((T, T), bool))
  return causal_TT[None] & attention_mask_BT.astype(bool)[:, None, :]


def positions_from_mask(attention_mask_BT: jax.Array) -> jax.Array:
  """0, 1, 2, ... over valid tokens (right or left padding alike)."""
  return jnp.maximum(jnp.cumsum(attention_mask_BT.astype(jnp.int32), axis=1) - 1, 0)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float):
  """cos and sin [..., E] (float32) of the rotary angles of ``positions`` [...]."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  freqs = jnp.concatenate([freqs, freqs], -1)
  return jnp.cos(freqs), jnp.sin(freqs)


def positions_cos_sin(positions, cfg: TextConfig):
  """cos and sin [B, T, E] of ``positions``: [B, T] (1-D RoPE), or [3, B, T] (t, h, w) with
  `cfg.mrope_section` set (Qwen2.5-VL's multimodal RoPE, `mrope.mrope_cos_sin`)."""
  if positions.ndim == 3:
    if cfg.mrope_section is None:
      raise ValueError("3-D positions need TextConfig.mrope_section (a Qwen2.5-VL decoder)")
    return mrope.mrope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
  return rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)


def rotate(x_BTHE: jax.Array, cos_BTE: jax.Array, sin_BTE: jax.Array) -> jax.Array:
  """Rotary embedding from precomputed `rope_cos_sin`, half-split layout (`rotate_half`),
  in float32."""
  E = x_BTHE.shape[-1]
  x = x_BTHE.astype(jnp.float32)
  rotated = jnp.concatenate([-x[..., E // 2:], x[..., : E // 2]], axis=-1)
  return (x * cos_BTE[:, :, None] + rotated * sin_BTE[:, :, None]).astype(x_BTHE.dtype)


def apply_rope(x_BTHE: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, half-split layout (`rotate_half`), computed in float32."""
  return rotate(x_BTHE, *rope_cos_sin(positions_BT, x_BTHE.shape[-1], theta))


class Attention(nnx.Module):

  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs, attention: str = "auto"):
    D, H, K, E = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = layers.Dense(D, H * E, ("embed", "q_heads"), bias=True, **kw)
    self.k = layers.Dense(D, K * E, ("embed", "kv_heads"), bias=True, **kw)
    self.v = layers.Dense(D, K * E, ("embed", "kv_heads"), bias=True, **kw)
    self.o = layers.Dense(H * E, D, ("q_heads", "embed"), bias=False, **kw)
    self.cfg, self.implementation = cfg, attention  # `layers.attention`'s implementation

  def project(self, x_BTD, cos_BTE, sin_BTE):
    """q [B, T, H, E] and k, v [B, T, K, E] of ``x_BTD``, RoPE (`rope_cos_sin`) on q, k."""
    B, T, _ = x_BTD.shape
    H, K, E = self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim
    q_BTHE = rotate(self.q(x_BTD).reshape(B, T, H, E), cos_BTE, sin_BTE)
    k_BTKE = rotate(self.k(x_BTD).reshape(B, T, K, E), cos_BTE, sin_BTE)
    return q_BTHE, k_BTKE, self.v(x_BTD).reshape(B, T, K, E)

  def __call__(self, x_BTD, positions_BT, mask_BTS, cache=None, cache_index=None):
    B, T, _ = x_BTD.shape
    H, E = self.cfg.num_heads, self.cfg.head_dim
    q_BTHE, k_BTKE, v_BTKE = self.project(x_BTD, *positions_cos_sin(positions_BT, self.cfg))
    if cache is not None:
      write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(
          buf, new.astype(buf.dtype), cache_index, axis=1)
      cache = {"k": write(cache["k"], k_BTKE), "v": write(cache["v"], v_BTKE)}
      k_BSKE, v_BSKE = cache["k"].astype(q_BTHE.dtype), cache["v"].astype(q_BTHE.dtype)
    else:
      k_BSKE, v_BSKE = k_BTKE, v_BTKE
    out_BTHE = layers.attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS, E ** -0.5,
                                self.implementation)
    return self.o(out_BTHE.reshape(B, T, H * E)), cache

  def decode(self, x_N1D, cos_N1E, sin_N1E, prompt_kv, prompt_valid_BP, kv, slot):
    """One token per row against a shared prompt block and the row's own completion
    block (see `Qwen2.decode`): the attention output [N, 1, D] and the updated ``kv``."""
    N = x_N1D.shape[0]
    H, E = self.cfg.num_heads, self.cfg.head_dim
    q_N1HE, k_N1KE, v_N1KE = self.project(x_N1D, cos_N1E, sin_N1E)
    # The completion block is [N, K, C, E] (see `Qwen2.decode`): slot ``slot`` on axis 2.
    write = lambda buf, new_N1KE: jax.lax.dynamic_update_slice_in_dim(
        buf, new_N1KE.transpose(0, 2, 1, 3).astype(buf.dtype), slot, axis=2)
    kv = {"k": write(kv["k"], k_N1KE), "v": write(kv["v"], v_N1KE)}
    C = kv["k"].shape[2]
    out_NHE = layers.shared_prefix_attention(
        q_N1HE[:, 0], prompt_kv["k"], prompt_kv["v"], prompt_valid_BP,
        kv["k"], kv["v"], jnp.arange(C) <= slot, E ** -0.5)
    return self.o(out_NHE.reshape(N, 1, H * E)), kv


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs, attention: str = "auto"):
    D, F = cfg.hidden_size, cfg.intermediate_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.input_norm = layers.RMSNorm(D, cfg.rms_norm_eps, "norm", dtype=dtype, param_dtype=param_dtype)
    self.post_norm = layers.RMSNorm(D, cfg.rms_norm_eps, "norm", dtype=dtype, param_dtype=param_dtype)
    self.attn = Attention(cfg, **kw, attention=attention)
    self.gate = layers.Dense(D, F, ("embed", "mlp"), bias=False, **kw)
    self.up = layers.Dense(D, F, ("embed", "mlp"), bias=False, **kw)
    self.down = layers.Dense(F, D, ("mlp", "embed"), bias=False, **kw)

  def mlp(self, x_BTD):
    """The residual MLP half of the layer: x + down(silu(gate(n)) * up(n)), n = norm(x)."""
    y = self.post_norm(x_BTD)
    return x_BTD + self.down(jax.nn.silu(self.gate(y)) * self.up(y))

  def __call__(self, x_BTD, positions_BT, mask_BTS, cache=None, cache_index=None):
    h, cache = self.attn(self.input_norm(x_BTD), positions_BT, mask_BTS, cache, cache_index)
    return self.mlp(x_BTD + h), cache

  def decode(self, x_N1D, cos_N1E, sin_N1E, prompt_kv, prompt_valid_BP, kv, slot):
    """`__call__` for one new token per row, attention as `Attention.decode`."""
    h, kv = self.attn.decode(self.input_norm(x_N1D), cos_N1E, sin_N1E, prompt_kv,
                             prompt_valid_BP, kv, slot)
    return self.mlp(x_N1D + h), kv


class Qwen2(nnx.Module):
  """Token embedding, decoder layers, final norm and LM head."""

  def __init__(self, cfg: TextConfig, *, dtype: str, param_dtype: str, rngs: nnx.Rngs,
               attention: str = "auto", scan_layers: bool = False):
    dt, pdt = DTYPES[dtype], DTYPES[param_dtype]
    V, D = cfg.padded_vocab_size, cfg.hidden_size
    self.embed = layers.param(rngs, (V, D), pdt, ("vocab", "embed"),
                              _real_vocab_init(cfg.vocab_size, axis=0))
    self.layers = nnx.List([DecoderLayer(cfg, dtype=dt, param_dtype=pdt, rngs=rngs,
                                         attention=attention)
                            for _ in range(cfg.num_layers)])
    self.norm = layers.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "norm", dtype=dt, param_dtype=pdt)
    self.lm_head = (None if cfg.tie_word_embeddings else
                    layers.Dense(D, V, ("embed", "vocab"), bias=False, dtype=dt, param_dtype=pdt,
                                 rngs=rngs, kernel_init=_real_vocab_init(cfg.vocab_size, axis=1)))
    self.cfg, self.dtype, self.scan_layers = cfg, dt, scan_layers

  def embed_tokens(self, ids_BT: jax.Array) -> jax.Array:
    return jnp.take(self.embed[...], ids_BT, axis=0).astype(self.dtype)

  def __call__(self, x_BTD, positions_BT, mask_BTS, cache: Cache | None = None,
               cache_index=None, *, remat: str = "off"):
    """Final-normed hidden states [B, T, D] and the updated cache (or None). ``remat``
    (`REMAT_POLICIES`, cache-less passes): what each layer keeps for the gradient."""
    if cache is None:
      if remat not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r} not in {tuple(REMAT_POLICIES)}")
      if self.scan_layers:
        return self.norm(self._scan(x_BTD, positions_BT, mask_BTS, remat)), None
      call = lambda layer, x: layer(x, positions_BT, mask_BTS)[0]
      if remat != "off":
        call = nnx.remat(call, policy=REMAT_POLICIES[remat])
      for layer in self.layers:
        x_BTD = call(layer, x_BTD)
      return self.norm(x_BTD), None
    new_cache = []
    for i, layer in enumerate(self.layers):
      x_BTD, c = layer(x_BTD, positions_BT, mask_BTS, cache[i], cache_index)
      new_cache.append(c)
    return self.norm(x_BTD), new_cache

  def _scan(self, x_BTD, positions_BT, mask_BTS, remat: str):
    """The cache-less layer loop as one `lax.scan` over the layers' weights stacked on a
    leading axis (a copy per pass, each stored layer's gradient from its slice): XLA
    compiles and schedules one layer, not ``num_layers``. The same arithmetic as the
    loop; summation order aside, the same values."""
    splits = [nnx.split(layer) for layer in self.layers]
    graphdef = splits[0][0]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in splits))

    def layer_fn(state, x_BTD):
      return nnx.merge(graphdef, state)(x_BTD, positions_BT, mask_BTS)[0]

    if remat != "off":
      layer_fn = jax.checkpoint(layer_fn, policy=REMAT_POLICIES[remat], prevent_cse=False)
    x_BTD, _ = jax.lax.scan(lambda x, state: (layer_fn(state, x), None), x_BTD, stacked)
    return x_BTD

  def decode(self, token_N, position_N, prompt_cache, prompt_valid_BP, cache, slot,
             rope_table):
    """One token per row through every layer: the next logits [N, V] and the new cache.

    Rows are grouped by prompt (N = B*G, video-major): attention runs over two key
    blocks, the group's shared prompt (``prompt_cache``: per layer k, v [B, K, P, E];
    ``prompt_valid_BP``) and the row's own completion (``cache``: per layer k, v
    [N, K, C, E]; this token's key goes to ``slot``, later slots are masked), with one
    softmax over both, so the result is attention over their concatenation.
    ``rope_table``: `rope_cos_sin` of positions 0, 1, ... (at least to ``position_N``).
    """
    x_N1D = self.embed_tokens(token_N[:, None])
    # One gather for every layer and for q and k alike (XLA would otherwise recompute
    # the sines inside each consumer's fusion).
    cos_N1E, sin_N1E = (jnp.take(t, position_N, axis=0)[:, None] for t in rope_table)
    new_cache = []
    for layer, prompt_kv, kv in zip(self.layers, prompt_cache, cache):
      x_N1D, kv = layer.decode(x_N1D, cos_N1E, sin_N1E, prompt_kv, prompt_valid_BP, kv, slot)
      new_cache.append(kv)
    return self.logits(self.norm(x_N1D))[:, 0], new_cache

  def logits(self, h_BTD: jax.Array) -> jax.Array:
    """Float32 logits [B, T, V] over the stored (padded) vocabulary, -inf at the padding
    ids: softmax gives them no mass and no sampler can draw them, and the tensor-split
    vocabulary axis is never resliced. `InternVL.forward` returns `vocab_size` columns."""
    if self.lm_head is None:
      out = jnp.einsum("btd,vd->btv", h_BTD, self.embed[...].astype(self.dtype))
    else:
      out = self.lm_head(h_BTD)
    out = out.astype(jnp.float32)
    V = out.shape[-1]
    if V == self.cfg.vocab_size:
      return out
    # -inf rather than a large finite value: exp gives exactly 0, it survives any
    # temperature, and the rollout's top-k search from the row minimum stays as short.
    return jnp.where(jnp.arange(V) < self.cfg.vocab_size, out, -jnp.inf)


def _real_vocab_init(vocab_size: int, axis: int):
  """`layers.param`'s normal init with the padding ids (past ``vocab_size`` on ``axis``)
  zero; without padding, the values the plain normal init gives."""
  def init(key, shape):
    x = layers.INIT_STD * jax.random.normal(key, shape, jnp.float32)
    real = jnp.arange(shape[axis]) < vocab_size
    return jnp.where(real[:, None] if axis == 0 else real[None, :], x, 0.0)
  return init
