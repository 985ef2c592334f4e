"""What the two families' models share on top of their own `embed` and `prompt_positions`
(`internvl.InternVL`, `qwen_vl.Qwen25VL`): the decoder pass the RL code calls and the
plain forward.

Legend: B batch, T tokens, D LLM width, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqathinker_jax.model import layers, sharding


def check_ids(input_ids) -> bool:
  """Checks ``input_ids`` is [batch, tokens]; returns whether its values can be read here
  (not a tracer, nor a global array spanning other processes' devices, as in multi-host
  evaluation: of those only the shapes are checked)."""
  if np.ndim(input_ids) != 2:
    raise ValueError(f"input_ids must be [batch, tokens], got shape {np.shape(input_ids)}")
  return (not isinstance(input_ids, jax.core.Tracer)
          and getattr(input_ids, "is_fully_addressable", True))


def check_pixels(pixel_values, step: int, hint: str) -> tuple[int, ...]:
  """Checks frames are normalised floats [N, H, W, 3] or [B, T, H, W, 3] with sides that
  are multiples of ``step`` (``hint`` says why); returns the shape."""
  shape = tuple(np.shape(pixel_values))
  if len(shape) not in (4, 5) or shape[-1] != 3:
    raise ValueError("pixel_values must be [frames, height, width, 3] or [videos, frames, "
                     f"height, width, 3] (channels last), got {shape}")
  if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
    raise ValueError(f"pixel_values must be normalised floats, got dtype {pixel_values.dtype}")
  if shape[-3] % step or shape[-2] % step:
    raise ValueError(f"frame size {shape[-3]}x{shape[-2]} must be a multiple of {step} ({hint})")
  return shape


@nnx.jit(static_argnames="train")
def jit_forward(m, input_ids, pixel_values, attention_mask, train: bool = False):
  """`VisionLanguageModel.forward` compiled (per model, shapes and ``train``)."""
  return m.forward(input_ids, pixel_values, attention_mask, train)


class VisionLanguageModel(nnx.Module):
  """A subclass has `cfg` (with `text.vocab_size`), `llm` (`llm.Qwen2`), `embed` and
  `prompt_positions`."""

  def hidden_states(self, input_ids_BT, pixel_values, positions, mask_BTS, *,
                    train: bool = False, slots_BT=None, remat: str = "off",
                    drop_key: jax.Array | None = None) -> jax.Array:
    """Final-normed decoder states [B, T, D] for explicit positions ([B, T]; Qwen2.5-VL's
    [3, B, T]) and an attention mask, [B, T, T] or a `layers.PrefixGroupMask` (packed GRPO
    rows); the LM head is left to the caller. ``remat``: `llm.REMAT_POLICIES`, for the
    vision blocks and the decoder layers; ``drop_key``, ``slots_BT`` as `embed`'s."""
    x_BTD = self.embed(sharding.constrain_batch(input_ids_BT), pixel_values, train, slots_BT,
                       drop_key, remat)
    h_BTD, _ = self.llm(x_BTD, positions, mask_BTS, remat=remat)
    return sharding.constrain_batch(h_BTD)

  def forward(self, input_ids_BT, pixel_values=None, attention_mask_BT=None,
              train: bool = False) -> jax.Array:
    """Logits [B, T, V] of right-padded prompts, causal, at the model's own positions."""
    ids_BT = sharding.constrain_batch(input_ids_BT)
    if attention_mask_BT is None:
      attention_mask_BT = jnp.ones(ids_BT.shape, jnp.int32)
    positions, _, _ = self.prompt_positions(ids_BT, attention_mask_BT, pixel_values)
    h_BTD = self.hidden_states(ids_BT, pixel_values, positions,
                               layers.CausalMask(attention_mask_BT), train=train)
    # The public logits are the checkpoint's vocabulary: the padding ids are cut off.
    return sharding.constrain_batch(self.llm.logits(h_BTD)[..., :self.cfg.text.vocab_size])
