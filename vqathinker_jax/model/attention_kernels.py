"""Memory-efficient attention behind `layers.attention`: splash attention (Pallas) on TPU,
cuDNN's fused attention on GPU, for the patterns the model states by structure: full (the
ViT), causal over valid keys (`layers.CausalMask`: the decoder's prefill and forward) and
packed prefix groups (`layers.PrefixGroupMask`: GRPO's `[prompt | c_1 .. c_G]` rows).

`resolve` picks the implementation: ``ModelConfig.attention`` 'auto' is splash on TPU,
cuDNN on an NVIDIA GPU for bfloat16/float16 and head dims it takes, XLA otherwise. The
platform is the one being compiled for: the mesh in context's (`tools/aot` lowers for a
TPU on a CPU host), else JAX's default backend.

Every row a caller reads equals XLA's; so does every row of a right-padded `CausalMask`.
Padded prompt queries of a `PrefixGroupMask` differ (finite, never read): splash shows
them the valid keys before them but not the query itself (the dense mask's diagonal),
the cuDNN path returns zeros there; and a row with no key to see at all (an all-padding
sequence) averages other values than XLA's.
Legend: B batch, T query tokens, S keys (T = S here), H query / K KV heads, E head dim;
for prefix groups P prompt tokens, G groups of C tokens, L = P + G*C; N = B*G unpacked
rows of R = P + C tokens; Tp the padded length splash runs at.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from vqathinker_jax.model import sharding

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
# cuDNN's flash attention takes half-precision inputs and head dims that are multiples of
# 8 up to 128 (256 from Hopper on; 'auto' keeps to what every generation takes).
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128
_LANES = 128        # splash blocks are multiples of the TPU's 128 lanes
_MAX_BLOCK = 512    # v5p: 512 x 512 logits per step fill the MXU and stay in VMEM


def target() -> tuple[str, str]:
  """(platform, device kind) being compiled for: the mesh in context's, else the default
  backend's."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  if device is not None:
    return device.platform, device.device_kind or ""
  return jax.default_backend(), jax.devices()[0].device_kind


def cudnn_supports(dtype, head_dim: int) -> bool:
  return (jnp.dtype(dtype) in [jnp.dtype(d) for d in CUDNN_DTYPES]
          and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM)


def resolve(implementation: str, dtype, head_dim: int) -> str:
  """'xla', 'splash' or 'cudnn' for a configured ``implementation`` (`IMPLEMENTATIONS`).
  Explicit 'splash' off a TPU runs Pallas' interpreter (slow: tests and debugging)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r}; expected one of "
                     f"{IMPLEMENTATIONS}")
  platform, kind = target()
  nvidia = platform == "gpu" and "nvidia" in kind.lower()
  if implementation == "auto":
    if platform == "tpu":
      return "splash"
    return "cudnn" if nvidia and cudnn_supports(dtype, head_dim) else "xla"
  if implementation == "cudnn":
    if not nvidia:
      raise ValueError(f"attention 'cudnn' needs an NVIDIA GPU, compiling for {platform} "
                       f"({kind}); use 'auto' or 'xla'")
    if not cudnn_supports(dtype, head_dim):
      raise ValueError(f"attention 'cudnn' takes bfloat16/float16 and head dims that are "
                       f"multiples of 8 up to {CUDNN_MAX_HEAD_DIM}, got "
                       f"{jnp.dtype(dtype).name} and {head_dim}; use 'auto' or 'xla'")
  return implementation


# ------------------------------------------------------------------------------ splash ---

def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def splash_blocks(length: int, max_block: int | None = None) -> tuple[int, int]:
  """(padded length Tp, block): Tp a multiple of 128 lanes; short sequences take the
  largest block up to ``max_block`` that divides it (the ViT's 1025 tokens: 1152 in blocks
  of 384), long ones pad to a multiple of ``max_block`` (at most 511 more tokens, 2 % at
  25k) rather than fall to small blocks, whose mask tables take long to build at trace
  time and keep the MXU less busy."""
  max_block = max_block or _MAX_BLOCK  # read at the call: tests lower it to run many blocks
  padded = _round_up(length, _LANES)
  if padded > 4 * max_block:
    return _round_up(length, max_block), max_block
  block = max(b for b in range(_LANES, max_block + 1, _LANES) if padded % b == 0)
  return padded, block


@functools.cache
def _prefix_group_mask_type():
  """Splash's static mask of packed rows (`layers.PrefixGroupMask`), one class for all
  calls so that equal masks hash equal (splash caches its mask tables by mask)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  class PrefixGroupSplashMask(sm._ComputableMask):  # pylint: disable=protected-access
    """Keys up to the query, and of those the prompt's and the query's own group's,
    computed in the kernel from positions (the [Tp, Tp] array is never built). Positions
    past the groups (padding) form further groups of their own."""

    def __init__(self, length: int, prompt: int, group_len: int):
      self.prompt, self.group_len = prompt, group_len
      # Shifted so that the division's operands are >= 0 (floor = truncation) and the
      # first completion starts a group: (x + shift) // C is completion token x's group.
      shift = _round_up(prompt, group_len) - prompt

      def mask_function(q_ids, kv_ids):
        same_group = (q_ids + shift) // group_len == (kv_ids + shift) // group_len
        return (q_ids >= kv_ids) & ((kv_ids < prompt) | same_group)
      super().__init__((length, length), mask_function)

    def _key(self):
      return self.shape, self.prompt, self.group_len

    def __eq__(self, other):
      return type(other) is type(self) and other._key() == self._key()

    def __hash__(self):
      return hash(self._key())

  return PrefixGroupSplashMask


def _on_mesh(fn, q_BHTE, k_BKSE, v_BKSE, ids_BS):
  """``fn`` per device under `shard_map` (a Pallas call is not partitioned by XLA): the
  batch split over the mesh's batch axes and the heads over ``tensor`` where they divide;
  what does not divide is gathered."""
  mesh = jax.sharding.get_abstract_mesh()
  free = () if mesh.empty else tuple(a for a in mesh.axis_names if a not in mesh.manual_axes)
  if not free or all(mesh.shape[a] == 1 for a in free):
    return fn(q_BHTE, k_BKSE, v_BKSE, ids_BS)
  B, H, K = q_BHTE.shape[0], q_BHTE.shape[1], k_BKSE.shape[1]
  batch = sharding.batch_axes() if B % sharding.batch_shards() == 0 else ()
  t = mesh.shape.get("tensor", 1)
  heads = "tensor" if "tensor" in free and t > 1 and H % t == 0 and K % t == 0 else None
  b = batch or None
  spec4, spec2 = PartitionSpec(b, heads, None, None), PartitionSpec(b, None)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec4, spec4, spec4, spec2), out_specs=spec4,
                       axis_names=set(free), check_vma=False)(q_BHTE, k_BKSE, v_BKSE, ids_BS)


def splash_attention(q_BTHE, k_BSKE, v_BSKE, valid_BS, scale: float, *, causal: bool,
                     groups: tuple[int, int] | None = None, interpret: bool = False):
  """Splash attention (TPU Pallas; Pallas' interpreter with ``interpret``): full, causal,
  or packed prefix groups (``groups`` = (G, C): the last G*C of the T tokens, causal
  implied). ``valid_BS``: the keys that may be attended (None: all). Grouped KV heads are
  the kernel's own (query head h reads KV head h // (H/K)). Sequences are padded to the
  kernel's blocks; padded keys are masked by segment ids (queries 1, keys valid), so a
  valid query sees exactly the valid keys the pattern allows."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  B, T, H, E = q_BTHE.shape
  S = k_BSKE.shape[1]
  if S != T:
    raise ValueError(f"splash attention here is self-attention: {T} queries, {S} keys")
  Tp, block = splash_blocks(T)
  if groups is not None:
    G, C = groups
    mask = _prefix_group_mask_type()(Tp, T - G * C, C)
  elif causal:
    mask = sa.CausalMask((Tp, Tp))
  else:
    mask = sa.FullMask((Tp, Tp))
  blocks = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                         block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                         block_q_dq=block, block_kv_dq=block)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, Tp - T), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  # The kernel takes no scale: q is scaled first, in float32 (one rounding in q's dtype,
  # not a scale rounded to bfloat16 for every logit alike).
  q_BHTE = pad((q_BTHE.astype(jnp.float32) * scale).astype(q_BTHE.dtype))
  k_BKTE, v_BKTE = pad(k_BSKE), pad(v_BSKE)
  valid_BS = jnp.ones((B, S), bool) if valid_BS is None else valid_BS.astype(bool)
  kv_ids_BT = jnp.pad(valid_BS, ((0, 0), (0, Tp - T))).astype(jnp.int32)

  def per_device(q_BHTE, k_BKTE, v_BKTE, kv_ids_BT):
    kernel = sa.make_splash_mha(sa.MultiHeadMask([mask] * q_BHTE.shape[1]), block_sizes=blocks,
                                head_shards=1, q_seq_shards=1, interpret=interpret)
    one = lambda q, k, v, kv_ids: kernel(q, k, v, sa.SegmentIds(jnp.ones_like(kv_ids), kv_ids))
    return jax.vmap(one)(q_BHTE, k_BKTE, v_BKTE, kv_ids_BT)

  out_BHTE = _on_mesh(per_device, q_BHTE, k_BKTE, v_BKTE, kv_ids_BT)
  return out_BHTE.transpose(0, 2, 1, 3)[:, :T]


# ------------------------------------------------------------------------------- cuDNN ---

def cudnn_attention(q_BTHE, k_BSKE, v_BSKE, valid_BS, scale: float, *, causal: bool,
                    groups: tuple[int, int] | None = None, implementation: str = "cudnn"):
  """`jax.nn.dot_product_attention` with cuDNN's masks: causal (top-left) and key
  padding as lengths, so ``valid_BS`` must be right-padded (valid keys first), as every
  caller's is. Prefix groups (``groups`` = (G, C)) have no cuDNN mask: each group is
  unpacked into its own causal row `[valid prompt | c_g | padding]` (N = B*G rows of
  R = P + C), which recomputes the prompt's queries G times but never forms an [L, L]
  score matrix; prompt outputs come from group 0's row, padded prompt slots are zero.
  ``implementation='xla'`` runs the same arguments through XLA (tests, off-GPU)."""
  B, T, H, E = q_BTHE.shape
  S = k_BSKE.shape[1]
  lengths_B = None if valid_BS is None else valid_BS.astype(jnp.int32).sum(-1)
  if groups is None:
    return jax.nn.dot_product_attention(
        q_BTHE, k_BSKE, v_BSKE, scale=scale, is_causal=causal,
        key_value_seq_lengths=lengths_B, implementation=implementation)
  G, C = groups
  P, R = S - G * C, S - G * C + C
  if lengths_B is None:
    lengths_B = jnp.full((B,), S, jnp.int32)
  plen_B = lengths_B - G * C
  r_R = jnp.arange(R)
  # Packed index of unpacked slot r of group g: the prompt's token r, then c_g's r - plen.
  comp_BGR = P + jnp.arange(G)[None, :, None] * C + r_R - plen_B[:, None, None]
  src_BGR = jnp.where(r_R < plen_B[:, None, None], r_R, jnp.minimum(comp_BGR, S - 1))
  unpack = lambda x_BSXE: jnp.take_along_axis(
      x_BSXE, src_BGR.reshape(B, G * R)[:, :, None, None], axis=1).reshape(
          B * G, R, *x_BSXE.shape[2:])
  out_NRHE = jax.nn.dot_product_attention(
      unpack(q_BTHE), unpack(k_BSKE), unpack(v_BSKE), scale=scale, is_causal=True,
      key_value_seq_lengths=jnp.repeat(plen_B + C, G), implementation=implementation)
  out_BGRHE = out_NRHE.reshape(B, G, R, H, E)
  slot_BGC = plen_B[:, None, None] + jnp.arange(C)
  out_BGCHE = jnp.take_along_axis(out_BGRHE, slot_BGC[..., None, None], axis=2)
  prompt_BP = jnp.arange(P) < plen_B[:, None]
  out_BPHE = jnp.where(prompt_BP[..., None, None], out_BGRHE[:, 0, :P], 0)
  return jnp.concatenate([out_BPHE, out_BGCHE.reshape(B, G * C, H, E)], axis=1)
