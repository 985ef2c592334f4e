"""VQAThinker's motion token: frozen SlowFast features -> `motion_mlp` -> one LLM token.

Legend: B videos, F SlowFast feature width, D LLM width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vqathinker_jax.model import layers


def _uniform_0_001(key, shape):
  # The reference initialises motion_mlp weights U(0, 0.01) (biases 0).
  return jax.random.uniform(key, shape, jnp.float32, 0.0, 0.01)


class MotionProjector(nnx.Module):
  """`motion_mlp`: LayerNorm(F, eps 1e-5) -> Linear(F, D) -> exact GELU -> Linear(D, D);
  F = 2304 for SlowFast-R50."""

  def __init__(self, f: int, d: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.norm = layers.LayerNorm(f, 1e-5, "norm", dtype=dtype, param_dtype=param_dtype)
    kw = dict(bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
              kernel_init=_uniform_0_001)
    self.fc1 = layers.Dense(f, d, ("proj_in", "embed"), **kw)
    self.fc2 = layers.Dense(d, d, ("mlp", "embed"), **kw)

  def __call__(self, feats_BF: jax.Array) -> jax.Array:
    return self.fc2(layers.gelu(self.fc1(self.norm(feats_BF))))
