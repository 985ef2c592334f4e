"""The model families (InternVL3, Qwen2.5-VL) behind one interface: which class a config
builds, random initialisation on a mesh, the shapes `tools/aot` compiles from, and the
input checks.

    m = init(cfg, seed=0, mesh=mesh)          # cfg: ModelConfig or qwen_vl.QwenVLConfig
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vqathinker_jax.model import internvl, qwen_vl, sharding, vlm


def module_class(cfg) -> type:
  """The model class of ``cfg``'s family (`ModelConfig`: InternVL; `qwen_vl.QwenVLConfig`:
  Qwen2.5-VL)."""
  return qwen_vl.Qwen25VL if cfg.family == qwen_vl.FAMILY else internvl.InternVL


def check_inputs(cfg, input_ids, pixel_values, train: bool = False) -> None:
  """The family's own checks (`internvl.check_inputs`, `qwen_vl.check_inputs`)."""
  check = qwen_vl.check_inputs if cfg.family == qwen_vl.FAMILY else internvl.check_inputs
  check(cfg, input_ids, pixel_values, train)


def forward(m, input_ids, pixel_values=None, attention_mask=None, *, train: bool = False):
  """Logits [B, T, V] of our pipeline's inputs on either family (`InternVL.__call__`'s
  contract: frames [N, H, W, 3] or [B, T, H, W, 3]), after the family's checks. Qwen2.5-VL's
  own call takes transformers' processor outputs instead."""
  check_inputs(m.cfg, input_ids, pixel_values, train)
  return vlm.jit_forward(m, jnp.asarray(input_ids), pixel_values, attention_mask, train)


def init(cfg, seed: int = 0, mesh: jax.sharding.Mesh | None = None,
         rules=sharding.DEFAULT_RULES) -> nnx.Module:
  """A randomly initialised model of ``cfg``'s family whose parameters are created
  already sharded."""
  mesh = mesh or sharding.single_device_mesh()
  graphdef, create = _init_program(cfg, mesh, tuple(rules.items()))
  return nnx.merge(graphdef, create(np.int64(seed)))  # the key jax.random.key(seed) gives


def abstract_state(cfg, mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES):
  """(graphdef, the state's shapes, their shardings on ``mesh``): the model as `init`
  creates it, without creating anything (`tools/aot` compiles from it)."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: module_class(cfg)(cfg, nnx.Rngs(0))))
  return graphdef, abstract, sharding.param_shardings(abstract, mesh, dict(rules))


@functools.lru_cache(maxsize=16)
def _init_program(cfg, mesh: jax.sharding.Mesh, rules: tuple):
  """(graphdef, jitted seed -> state), compiled once per model, mesh and rules: the seed
  is an argument, so other seeds (and other callers) reuse the program."""
  graphdef, _, shardings = abstract_state(cfg, mesh, rules)
  # Under jit with out_shardings, each device materialises only its own shard.
  create = jax.jit(lambda seed: nnx.state(module_class(cfg)(cfg, nnx.Rngs(jax.random.key(seed)))),
                   out_shardings=shardings)
  return graphdef, create
