"""The jitted update steps: the programs the trainer runs, and the ones the tests and
benchmarks exercise (one factory each, so the tested step is the production step).

    step = make_grpo_step(graphdef, state, tx, cfg, reward_fn)
    state, metrics = step(state, batch, rng)        # batch as `grpo.train_step` takes it

``prepare(state, batch, rng) -> (batch, rng)`` runs inside the program first; the
trainer's (`prompt_and_frames`) broadcasts the prompt, normalises uint8 frames on device
and folds the state's step counter into the key.
Legend: B videos, P prompt tokens, T frames, H/W pixels.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vqathinker_jax import factory
from vqathinker_jax.rl import grpo
from vqathinker_jax.train import sft
from vqathinker_jax.train.state import TrainState, jit_step

Prepare = Callable[[TrainState, dict, jax.Array], tuple[dict, jax.Array]]


def _as_is(state, batch, rng):
  return batch, rng


def make_grpo_step(graphdef, state: TrainState, tx, cfg: grpo.GRPOConfig, reward_fn,
                   prepare: Prepare = _as_is):
  """The jitted `step(state, batch, rng) -> (state, metrics)`: rollout, rewards,
  reference and update (`grpo.train_step`) as one program that keeps the state's layout
  and donates it (`jit_step`)."""
  def step(st, batch, rng):
    batch, rng = prepare(st, batch, rng)
    return grpo.train_step(graphdef, st, batch, rng, tx, cfg, reward_fn)
  return jit_step(step, state)


def make_update_step(graphdef, state: TrainState, tx, cfg: grpo.GRPOConfig):
  """The jitted `step(state, batch) -> (state, metrics)` of the policy update alone
  (`grpo.update`, on already scored rollouts)."""
  return jit_step(lambda st, batch: grpo.update(graphdef, st, batch, tx, cfg), state)


def make_sft_step(graphdef, state: TrainState, tx, chunk: int = 256,
                  prepare: Prepare = _as_is, remat: str = "off"):
  """The jitted `step(state, batch) -> (state, metrics)` of the SFT warm-start
  (`sft.step`); ``prepare``'s key is unused."""
  def step(st, batch):
    batch, _ = prepare(st, batch, None)
    return sft.step(graphdef, st, batch, tx, chunk, remat)
  return jit_step(step, state)


def prompt_and_frames(prompt_P: np.ndarray, family: str = "internvl") -> Prepare:
  """The trainer's `prepare`: every video gets the same prompt ``prompt_P`` (one prompt
  template per run), its uint8 frames [B, T, H, W, 3] are normalised on device as
  ``family``'s vision tower expects (a quarter of the bytes to move), and the step's key is `fold_in(rng, state.step)` (the state's
  own counter, so a resumed run draws what an uninterrupted one would)."""
  def prepare(st, b, rng):
    B = b["frames"].shape[0]
    ids_BP = jnp.broadcast_to(jnp.asarray(prompt_P), (B, prompt_P.shape[0]))
    out = {k: v for k, v in b.items() if k not in ("frames", "label")}
    out.update(prompt_ids=ids_BP, prompt_mask=jnp.ones_like(ids_BP),
               pixel_values=factory.normalize_frames(b["frames"], family))
    if "label" in b:
      out["labels"] = b["label"]
    return out, None if rng is None else jax.random.fold_in(rng, st.step)
  return prepare
