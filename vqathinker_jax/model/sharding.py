"""Device mesh and the map from logical parameter axes to mesh axes.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel with parameters
sharded), ``tensor`` (Megatron-style model parallel). Logical names are attached to
every parameter in `layers.py`; `DEFAULT_RULES` decides where each one goes.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("fsdp", "data")  # activations: the batch dimension is split over both

# logical axis -> mesh axis (or None: replicated). Matrices pair an `fsdp` axis with a
# `tensor` axis so that each is split two ways at once.
DEFAULT_RULES: dict[str, str | None] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "vit_embed": "fsdp",
    "vit_mlp": "tensor",
    "vit_heads": "tensor",
    "proj_in": "tensor",
    "norm": None,
}


# The rollout's decode layout (`decode_layout`): parameters whole over `fsdp`, still split
# over `tensor`. Decoding feeds one token per row, so on the training layout each step
# would all-gather every fsdp-split matrix again (XLA cannot hoist it out of the loop).
DECODE_RULES: dict[str, str | None] = {k: (None if v == "fsdp" else v)
                                       for k, v in DEFAULT_RULES.items()}


def make_mesh(shape: Mapping[str, int] | Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one entry may be -1 (the rest of the devices).

  ``None`` puts every device on ``fsdp``.
  """
  devices = list(devices if devices is not None else jax.devices())
  if shape is None:
    shape = {"fsdp": -1}
  if isinstance(shape, Mapping):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
    dims = [int(shape.get(a, 1)) for a in MESH_AXES]
  else:
    dims = [int(d) for d in shape]
    if len(dims) != len(MESH_AXES):
      raise ValueError(f"mesh shape {tuple(dims)} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if dims.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(dims)}: at most one axis may be -1")
  known = math.prod(d for d in dims if d != -1)
  if -1 in dims:
    if len(devices) % known:
      raise ValueError(f"mesh shape {tuple(dims)} does not divide {len(devices)} devices")
    dims[dims.index(-1)] = len(devices) // known
  if math.prod(dims) != len(devices):
    raise ValueError(f"mesh shape {dict(zip(MESH_AXES, dims))} needs {math.prod(dims)} "
                     f"devices, but {len(devices)} are available")
  grid = np.asarray(devices).reshape(dims)
  # Auto axes: the model uses with_sharding_constraint-style annotations and lets
  # GSPMD propagate the rest.
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
  return make_mesh((1, 1, 1), [device or jax.devices()[0]])


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, str | None] = DEFAULT_RULES) -> P:
  """PartitionSpec for a tensor with logical ``axes``.

  A dimension stays replicated when its rule is None, when the mesh axis is already
  used by an earlier dimension, or when the size does not divide evenly.
  """
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
  used, spec = set(), []
  for name, size in zip(axes, shape):
    if name is not None and name not in rules:
      raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
    target = rules.get(name) if name is not None else None
    if target is not None and target not in mesh.axis_names:
      raise ValueError(f"rule {name!r} -> {target!r}: no such mesh axis {mesh.axis_names}")
    if target is None or target in used or size % mesh.shape[target]:
      spec.append(None)
      continue
    used.add(target)
    spec.append(target)
  return P(*spec)


def param_shardings(abstract_state: nnx.State, mesh: Mesh,
                    rules: Mapping[str, str | None] = DEFAULT_RULES) -> nnx.State:
  """A State of NamedShardings mirroring ``abstract_state`` (from `nnx.eval_shape`)."""

  def one(var):
    axes = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
    return var.replace(NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh, rules)))

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def decode_layout(module: nnx.Module, dtype) -> nnx.Module:
  """A copy of ``module`` for a decode loop (traceable; made once, outside the loop):
  matrices cast to ``dtype`` (what the layers compute in, so results are unchanged) and
  every parameter placed by `DECODE_RULES` on the mesh in context. Without a mesh, only
  the cast. Costs one ``dtype`` copy of the module per `tensor` shard."""
  mesh = jax.sharding.get_abstract_mesh()
  graphdef, state = nnx.split(module)

  def one(var):
    if not isinstance(var, nnx.Param):
      return var
    value = var[...]
    if value.ndim >= 2:  # vectors (norm scales, biases) are tiny and kept as stored
      value = value.astype(dtype)
    if not mesh.empty:
      axes = var.get_metadata().get("out_sharding") or (None,) * value.ndim
      value = jax.lax.with_sharding_constraint(
          value, logical_to_spec(axes, value.shape, mesh, DECODE_RULES))
    return var.replace(value)

  state = jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def batch_axes() -> tuple[str, ...]:
  """The batch axes of the mesh in context that split it (size > 1), `fsdp` first; inside
  a `shard_map` over an axis, that axis is already split and is left out."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  manual = set(mesh.manual_axes)
  return tuple(a for a in BATCH_AXES
               if a in mesh.axis_names and mesh.shape[a] > 1 and a not in manual)


def batch_shards() -> int:
  """How many ways `batch_axes` split the batch."""
  mesh = jax.sharding.get_abstract_mesh()
  return math.prod(mesh.shape[a] for a in batch_axes())


def constrain_batch(x: jax.Array) -> jax.Array:
  """Split dim 0 over the batch axes of the mesh in context; a no-op without one.

  The order is `fsdp`-major on purpose: with `data`-major batches, XLA (jax 0.10.2, both
  Shardy and GSPMD) permutes rows between devices in LayerNorm -> Linear -> GELU ->
  Linear chains whose kernels put `fsdp` on the output dimension; see
  tests/model/sharding_test.py::test_sharded_batch_forward_matches for the guard.
  """
  axes = batch_axes()
  if not axes or x.shape[0] % batch_shards():
    return x
  # Other dimensions stay free, so that tensor-parallel activations are not gathered.
  return jax.lax.with_sharding_constraint(x, P(axes, *([P.UNCONSTRAINED] * (x.ndim - 1))))
