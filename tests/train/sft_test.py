"""SFT step: it learns the targets, and a non-finite loss leaves the state untouched."""


import jax
import jax.numpy as jnp
import numpy as np

from hf_tiny import IMAGE_TOKEN, TINY, video_batch
from vqathinker_jax import model
from vqathinker_jax.model import sharding
from vqathinker_jax.train import state as train_state, steps


def _batch(seed=0):
  ids, pix, mask = video_batch(seed=seed, videos=2, frames=2, size=56, motion=False)
  targets = np.random.default_rng(seed).integers(0, IMAGE_TOKEN, (2, 6)).astype(np.int32)
  tmask = np.array([[1] * 6, [1] * 4 + [0] * 2], np.int32)
  return dict(prompt_ids=jnp.asarray(ids), prompt_mask=jnp.asarray(mask),
              pixel_values=jnp.asarray(pix), targets=jnp.asarray(targets),
              target_mask=jnp.asarray(tmask))


def test_sft_step_learns_and_skips_non_finite():
  tx = train_state.make_optimizer(3e-3)
  m = model.init(TINY, seed=0, mesh=sharding.single_device_mesh())
  graphdef, state = train_state.init_state(m, tx, reference=False)
  step = steps.make_sft_step(graphdef, state, tx, chunk=4)  # the trainer's step
  batch = _batch()
  losses = []
  for _ in range(5):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] and int(state.skipped) == 0 and int(state.step) == 5
  kept = jax.tree.map(np.asarray, (state.params, state.opt_state))
  bad = dict(batch, pixel_values=batch["pixel_values"].at[0, 0, 0, 0, 0].set(jnp.nan))
  state, metrics = step(state, bad)
  assert int(metrics["skipped"]) == 1 and int(state.skipped) == 1
  jax.tree.map(np.testing.assert_array_equal,
               jax.tree.map(np.asarray, (state.params, state.opt_state)), kept)
