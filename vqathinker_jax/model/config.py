"""Architecture configuration of the InternVL3 family (ViT + projector + Qwen2.5)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from vqathinker_jax.model.attention_kernels import IMPLEMENTATIONS
from vqathinker_jax.model.slowfast import SlowFastConfig

class CheckpointError(ValueError):
  """A checkpoint directory that does not match what its config.json says (or that we
  cannot read), with a message naming the tensor or field."""


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """InternViT. Defaults: InternViT-300M-448px as used by InternVL3-8B."""
  hidden_size: int = 1024
  num_layers: int = 24
  num_heads: int = 16
  intermediate_size: int = 4096
  patch_size: int = 14
  image_size: int = 448          # size the position embeddings were trained at
  qkv_bias: bool = True
  qk_norm: bool = False          # RMSNorm over q and k (InternViT-6B)
  norm_type: str = "layer_norm"  # or "rms_norm" (InternViT-6B)
  layer_norm_eps: float = 1e-6
  layer_scale_init: float = 0.1
  final_norm: bool = False       # InternVL3 has none (use_mean_pooling=True in transformers)
  # Stochastic depth (InternVL's `drop_path_rate`): the last block's rate, block l's is
  # linspace(0, rate, num_layers)[l]. Applied only where a caller passes a key (the GRPO
  # rollout and update, as the reference's train mode); 0 = off.
  drop_path_rate: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f"VisionConfig.drop_path_rate={self.drop_path_rate}: must be in [0, 1)")

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  def drop_path_rates(self) -> tuple[float, ...]:
    """Per-block drop rates, `torch.linspace(0, rate, num_layers)` as InternVL's encoder."""
    return tuple(float(p) for p in np.linspace(0.0, self.drop_path_rate, self.num_layers))


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Qwen2/Qwen2.5 decoder. Defaults: Qwen2.5-7B as in InternVL3-8B."""
  vocab_size: int = 151674
  hidden_size: int = 3584
  num_layers: int = 28
  num_heads: int = 28
  num_kv_heads: int = 4
  head_dim: int = 128
  intermediate_size: int = 18944
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1_000_000.0
  max_position_embeddings: int = 32768
  tie_word_embeddings: bool = False
  vocab_multiple: int = 128      # stored vocabulary rounded up to this (`padded_vocab_size`)
  # Qwen2.5-VL's M-RoPE: frequencies per (t, h, w) row, e.g. (16, 24, 24); positions are then
  # [3, B, T] (`llm.positions_cos_sin`). None: 1-D RoPE (InternVL's decoder).
  mrope_section: tuple[int, ...] | None = None

  def __post_init__(self):
    if self.vocab_multiple < 1:
      raise ValueError(f"vocab_multiple must be >= 1, got {self.vocab_multiple}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError("text.num_heads must be a multiple of text.num_kv_heads")
    if self.mrope_section is not None and sum(self.mrope_section) != self.head_dim // 2:
      raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim / 2 = "
                       f"{self.head_dim // 2}")

  @property
  def padded_vocab_size(self) -> int:
    """Rows of the stored embedding and LM head: `vocab_size` rounded up to
    `vocab_multiple`, so the vocabulary splits over the mesh's `tensor` axis (151,674
    divides by neither 4 nor 8; 151,680 does). The extra ids never show: their logits are
    -inf (`llm.Qwen2.logits`), and checkpoints are read and written at `vocab_size`
    (`hf_checkpoint`)."""
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  image_token_id: int = 151667     # <IMG_CONTEXT>
  downsample_ratio: float = 0.5    # pixel shuffle
  vision_feature_layer: int = -1   # index into [embeddings, layer 1, ..., layer L]
  motion: SlowFastConfig | None = None  # VQAThinker's motion branch (None: plain InternVL3)
  dtype: str = "float32"           # compute dtype
  param_dtype: str = "float32"     # storage dtype of parameters
  # Attention kernel (`attention_kernels.IMPLEMENTATIONS`): auto = splash on TPU, cuDNN on
  # NVIDIA GPUs (bfloat16/float16), XLA otherwise; or xla | splash | cudnn.
  attention: str = "auto"
  # Decoder layers and ViT blocks as one `lax.scan` each over their stacked weights in
  # cache-less passes (the update, reference and SFT; the ViT in every pass): XLA compiles
  # one layer instead of every layer, and on XLA:CPU remat then holds (vision._scan).
  scan_layers: bool = False

  family = "internvl"  # not a field: the model family (`qwen_vl.QwenVLConfig`: qwen2_5_vl)

  def __post_init__(self):
    check_runtime_fields(self)
    if self.downsample_ratio != 0.5:
      raise ValueError(f"downsample_ratio={self.downsample_ratio}: only 0.5 (InternVL3) "
                       "is supported")
    if self.vision.hidden_size % self.vision.num_heads:
      raise ValueError("vision.hidden_size must be divisible by vision.num_heads")

  def tokens_per_frame(self, image_size: int | None = None) -> int:
    """Visual tokens one frame becomes: 256 at 448 px, 400 at 560 px."""
    grid = (image_size or self.vision.image_size) // self.vision.patch_size
    return (grid // 2) ** 2


def check_runtime_fields(cfg) -> None:
  """The fields every family's config has beside its architecture: `dtype`,
  `param_dtype` (`DTYPES`) and `attention` (`attention_kernels.IMPLEMENTATIONS`)."""
  name = type(cfg).__name__
  for field in ("dtype", "param_dtype"):
    if getattr(cfg, field) not in DTYPES:
      raise ValueError(f"{name}.{field}={getattr(cfg, field)!r}; expected one of "
                       f"{sorted(DTYPES)}")
  if cfg.attention not in IMPLEMENTATIONS:
    raise ValueError(f"{name}.attention={cfg.attention!r}; expected one of {IMPLEMENTATIONS}")


def dtype_name(dtype) -> str:
  """'float32' for jnp.float32, np.dtype('float32') or the string itself."""
  name = jnp.dtype(dtype).name
  if name not in DTYPES:
    raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}")
  return name
