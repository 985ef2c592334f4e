"""SFT: the step learns the targets and a non-finite loss leaves the state untouched; the
warm-start's answers (labels, or random scores that carry no label information)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_tiny import IMAGE_TOKEN, TINY, video_batch
from vqathinker_jax import model
from vqathinker_jax.model import sharding
from vqathinker_jax.train import sft, state as train_state, steps


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


def test_answers_label_or_random_without_label_information():
  labels = np.array([1.5, 4.25, 3.0])
  ids = ["synthetic_00000.mp4", "synthetic_00001.mp4", "synthetic_00002.mp4"]
  np.testing.assert_array_equal(sft.answers(labels, ids, "label", seed=0), labels)
  for mode, scenes in (("random", None), ("random_scene", [0, 1, 0])):
    a = sft.answers(labels, ids, mode, seed=0, scenes_B=scenes)
    # The labels do not enter; a video's score is fixed across steps and batch positions.
    np.testing.assert_array_equal(a, sft.answers(labels[::-1], ids, mode, 0, scenes))
    np.testing.assert_array_equal(a[::-1], sft.answers(labels, ids[::-1], mode, 0,
                                                       None if scenes is None else scenes[::-1]))
    assert np.all((a >= 1) & (a <= 5)) and np.all(np.round(a, 2) == a)
    assert not np.array_equal(a, sft.answers(labels, ids, mode, seed=1, scenes_B=scenes))
  # random_scene: SCENE_SHARE of the range is the scene's draw (shared), the rest the
  # video's (uniform within the scene's window).
  many = [f"synthetic_{i:05d}.mp4" for i in range(400)]
  a = sft.answers(np.ones(400), many, "random_scene", 0, [i % 4 for i in range(400)])
  width = 4.0 * (1.0 - sft.SCENE_SHARE)
  means = [a[s::4].mean() for s in range(4)]
  assert max(means) - min(means) > 0.2
  assert all(a[s::4].max() - a[s::4].min() <= width + 0.01 for s in range(4))
  assert abs(np.std(a[0::4]) / (width / np.sqrt(12)) - 1) < 0.2  # a uniform's std
  with pytest.raises(ValueError, match="scene"):
    sft.answers(labels, ids, "random_scene", 0)
