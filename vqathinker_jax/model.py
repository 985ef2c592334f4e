"""The InternVL3 multimodal model (Flax NNX) and its public entry points.

    m, cfg = from_pretrained(path, dtype=jnp.float32)    # either checkpoint layout
    logits_BTV = m(input_ids=ids_BT, pixel_values=pix_NHWC, attention_mask=mask_BT)
    save_pretrained(m, cfg, out_path)                     # transformers layout

Legend: B batch, T tokens, D LLM width, V vocabulary, N frames (all videos, in order of
appearance), H/W pixels, M visual tokens of the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqathinker_jax import llm, sharding
from vqathinker_jax.model_config import ModelConfig, dtype_name
from vqathinker_jax.vision import VisionTower


def merge_visual(x_BTD: jax.Array, is_visual_BT: jax.Array, feats_MD: jax.Array) -> jax.Array:
  """Scatter visual tokens into the placeholder positions, in order (row-major)."""
  B, T, D = x_BTD.shape
  flat = is_visual_BT.reshape(-1)
  idx = jnp.clip(jnp.cumsum(flat) - 1, 0, feats_MD.shape[0] - 1)
  gathered = jnp.take(feats_MD.astype(x_BTD.dtype), idx, axis=0)
  return jnp.where(flat[:, None], gathered, x_BTD.reshape(B * T, D)).reshape(B, T, D)


def check_inputs(cfg: ModelConfig, input_ids, pixel_values) -> None:
  """Host-side checks with messages that name the problem; skipped under tracing."""
  if isinstance(input_ids, jax.core.Tracer) or input_ids is None:
    return
  if np.ndim(input_ids) != 2:
    raise ValueError(f"input_ids must be [batch, tokens], got shape {np.shape(input_ids)}")
  n_slots = int((np.asarray(input_ids) == cfg.image_token_id).sum())
  if pixel_values is None:
    if n_slots:
      raise ValueError(f"input_ids hold {n_slots} <IMG_CONTEXT> tokens (id {cfg.image_token_id}) "
                       "but no pixel_values were given")
    return
  shape = np.shape(pixel_values)
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"pixel_values must be [frames, height, width, 3] (channels last), got {shape}")
  if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
    raise ValueError(f"pixel_values must be normalised floats, got dtype {pixel_values.dtype}")
  step = 2 * cfg.vision.patch_size
  if shape[1] % step or shape[2] % step:
    raise ValueError(f"frame size {shape[1]}x{shape[2]} must be a multiple of {step} "
                     "(patch size x pixel-shuffle factor)")
  per_frame = (shape[1] // step) * (shape[2] // step)
  if isinstance(pixel_values, jax.core.Tracer):
    return
  if n_slots != shape[0] * per_frame:
    raise ValueError(f"{shape[0]} frames x {per_frame} tokens = {shape[0] * per_frame} visual "
                     f"tokens, but input_ids hold {n_slots} <IMG_CONTEXT> slots")


class InternVL(nnx.Module):
  """ViT -> pixel shuffle -> mlp1 -> visual tokens merged into the Qwen2 decoder."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.vision = VisionTower(cfg, rngs)
    self.llm = llm.Qwen2(cfg.text, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
    self.cfg = cfg

  def embed(self, input_ids_BT: jax.Array, pixel_values_NHWC: jax.Array | None = None):
    """Input embeddings [B, T, D] with visual tokens in the `<IMG_CONTEXT>` slots."""
    x_BTD = self.llm.embed_tokens(input_ids_BT)
    if pixel_values_NHWC is None:
      return x_BTD
    feats_NPD = self.vision(sharding.constrain_batch(pixel_values_NHWC))
    feats_MD = feats_NPD.reshape(-1, feats_NPD.shape[-1])
    return merge_visual(x_BTD, input_ids_BT == self.cfg.image_token_id, feats_MD)

  def forward(self, input_ids_BT, pixel_values_NHWC=None, attention_mask_BT=None):
    input_ids_BT = sharding.constrain_batch(input_ids_BT)
    if attention_mask_BT is None:
      attention_mask_BT = jnp.ones(input_ids_BT.shape, jnp.int32)
    x_BTD = self.embed(input_ids_BT, pixel_values_NHWC)
    h_BTD, _ = self.llm(x_BTD, llm.positions_from_mask(attention_mask_BT),
                        llm.causal_mask(attention_mask_BT))
    return sharding.constrain_batch(self.llm.logits(h_BTD))

  def __call__(self, input_ids, pixel_values=None, attention_mask=None) -> jax.Array:
    """Logits [B, T, V] (float32). Right-padded batches: pass `attention_mask`."""
    check_inputs(self.cfg, input_ids, pixel_values)
    return _jit_forward(self, jnp.asarray(input_ids), pixel_values, attention_mask)


@nnx.jit
def _jit_forward(m: InternVL, input_ids, pixel_values, attention_mask):
  return m.forward(input_ids, pixel_values, attention_mask)


def init(cfg: ModelConfig, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
         rules=sharding.DEFAULT_RULES) -> InternVL:
  """A randomly initialised model whose parameters are created already sharded."""
  mesh = mesh or sharding.single_device_mesh()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: InternVL(cfg, nnx.Rngs(seed))))
  shardings = sharding.param_shardings(abstract, mesh, rules)

  # Under jit with out_shardings, each device materialises only its own shard.
  create = jax.jit(lambda: nnx.state(InternVL(cfg, nnx.Rngs(seed))), out_shardings=shardings)
  return nnx.merge(graphdef, create())


def from_pretrained(path, dtype=jnp.float32, *, param_dtype=None, mesh=None,
                    rules=sharding.DEFAULT_RULES, image_token_id: int | None = None):
  """Load a local Hugging Face InternVL directory (either layout) onto ``mesh``.

  Returns ``(model, cfg)``. ``dtype`` is the compute dtype; parameters are stored in
  ``param_dtype`` (default: the same).
  """
  from vqathinker_jax import checkpoint  # local import: keeps model.py importable alone
  return checkpoint.load(path, dtype=dtype_name(dtype),
                         param_dtype=dtype_name(param_dtype or dtype), mesh=mesh, rules=rules,
                         image_token_id=image_token_id)


def save_pretrained(m: InternVL, cfg: ModelConfig, path, **kwargs) -> None:
  """Write ``m`` as a transformers `InternVLForConditionalGeneration` directory."""
  from vqathinker_jax import checkpoint
  checkpoint.save(m, cfg, path, **kwargs)
