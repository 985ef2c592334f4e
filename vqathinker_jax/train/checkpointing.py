"""Training checkpoints: the train state, PRNG key, Grain iterator position and a JSON
metadata dict saved together in one Orbax step directory, asynchronously.

Layout per step `DIR/<step>/`: `state` (the TrainState pytree, sharded arrays), `rng` (the
key's raw data), `data` (one JSON file per process, only when an iterator was given) and
`metadata` (JSON). Orbax writes a step under a temporary name and renames it when every item
is complete, so a process killed mid-write leaves the previous steps intact and the partial
one invisible (removed when the next Checkpointer opens the directory).

  ckpt = Checkpointer(workdir / "checkpoints", keep=3, save_every=100)
  if ckpt.latest_step() is not None:
    state, rng, meta = ckpt.restore(None, state, rng, data_iterator=it)
  for ...:
    ckpt.save(step, state, rng, data_iterator=it, metadata={"loss": loss})
  ckpt.close()
"""

from __future__ import annotations

import os
from typing import Any

from etils import epath
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

_STATE, _RNG, _DATA, _META = "state", "rng", "data", "metadata"


def _abstract(x):
  """The restore target of one leaf: shape, dtype and the sharding to place it on."""
  if isinstance(x, jax.ShapeDtypeStruct):
    if x.sharding is None:
      raise ValueError(f"restore target leaf {x} has no sharding")
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


def _jsonable(tree):
  """Numpy/JAX scalars and arrays -> Python numbers and lists (json cannot write them)."""
  def one(x):
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
      x = np.asarray(x)
      return x.item() if x.ndim == 0 else x.tolist()
    return x
  return jax.tree.map(one, tree)


class Checkpointer:
  """Keeps the last `keep` checkpoints of `directory` (plus every step divisible by
  `keep_every`, when given); `save` is a no-op unless `step % save_every == 0` or `force`."""

  def __init__(self, directory, *, keep: int | None = 3, save_every: int = 1,
               keep_every: int | None = None, async_save: bool = True, read_only: bool = False):
    directory = os.fspath(directory)
    # epath: the same code for local disks and gs:// buckets.
    self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every,
        enable_async_checkpointing=async_save, read_only=read_only, create=not read_only,
        # Partial steps a killed run left behind would otherwise pile up.
        cleanup_tmp_directories=not read_only)
    self.save_every = save_every
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def due(self, step: int, *, force: bool = False) -> bool:
    """Whether `save(step, ..., force=force)` would write a checkpoint."""
    step = int(step)
    return (force or step % self.save_every == 0) and step not in self._manager.all_steps()

  def save(self, step: int, state, rng=None, *, data_iterator=None,
           metadata: dict | None = None, force: bool = False) -> bool:
    """Starts saving (returns once arrays are copied off the device, so the caller may donate
    `state` to the next step right away); False when this step is not due or already saved."""
    step = int(step)
    if not self.due(step, force=force):
      return False
    items = {_STATE: ocp.args.StandardSave(state),
             _META: ocp.args.JsonSave(_jsonable(dict(metadata or {})))}
    if rng is not None:
      # As numpy: a key on one device is a host-local array, which Orbax refuses to save
      # when there are several processes (every process holds the same key).
      items[_RNG] = ocp.args.StandardSave({"key": np.asarray(_key_data(rng))})
    if data_iterator is not None:
      # Grain's handler is synchronous: the position is read now, before the caller advances.
      items[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int | None, target_state, target_rng_like=None, *,
              data_iterator=None) -> tuple[Any, Any, dict]:
    """(state, rng, metadata) of `step` (None: the latest). Arrays come back with the shapes,
    dtypes and shardings of `target_state` (concrete arrays or `jax.ShapeDtypeStruct`s with
    shardings) and `target_rng_like` (a concrete key, typed or raw; None: no rng returned);
    `data_iterator` is moved in place to the saved position."""
    self.wait()
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
      step = steps[-1]
    elif int(step) not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                              f"(available: {steps or 'none'})")
    step = int(step)
    step_dir = self.directory / str(step)
    items = {_STATE: ocp.args.StandardRestore(jax.tree.map(_abstract, target_state)),
             _META: ocp.args.JsonRestore()}
    if target_rng_like is not None:
      if not (step_dir / _RNG).is_dir():
        raise ValueError(f"checkpoint {step_dir} holds no PRNG key")
      items[_RNG] = ocp.args.StandardRestore({"key": np.asarray(_key_data(target_rng_like))})
    if data_iterator is not None:
      if not (step_dir / _DATA).is_dir():
        raise ValueError(f"checkpoint {step_dir} holds no data iterator state")
      items[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    rng = None
    if target_rng_like is not None:
      rng = jax.numpy.asarray(out[_RNG]["key"])
      if jax.dtypes.issubdtype(target_rng_like.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng, impl=jax.random.key_impl(target_rng_like))
    return out[_STATE], rng, out[_META] or {}

  def wait(self):
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _key_data(rng):
  """Typed key arrays have no on-disk dtype: store their uint32 words (raw keys pass)."""
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  return rng
