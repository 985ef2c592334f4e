"""The jitted steps: the trainer's `prepare` (prompt broadcast, on-device normalisation,
per-step key) turns its batches into what the tested steps take, inside the program."""

import jax
import jax.numpy as jnp
import numpy as np

import tolerance
from hf_tiny import IMAGE_TOKEN, TINY, on_mesh, video_batch
from vqathinker_jax import model
from vqathinker_jax.model import sharding
from vqathinker_jax.train import state as train_state, steps

MEAN = np.array([0.485, 0.456, 0.406]) * 255  # ImageNet's, as torchvision states them
STD = np.array([0.229, 0.224, 0.225]) * 255


def _uint8_batch(seed=0, B=2, T=2, S=56):
  ids, _, _ = video_batch(seed=seed, videos=1, frames=T, size=S, motion=False)
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (B, T, S, S, 3), dtype=np.uint8)
  return ids[0].astype(np.int32), frames


def test_prompt_and_frames_prepares_the_trainers_batch():
  prompt_P, frames = _uint8_batch()
  prepare = steps.prompt_and_frames(prompt_P)
  state = train_state.TrainState(step=jnp.int32(7), params={}, rest={}, opt_state=(),
                                 ref_params=None, skipped=jnp.int32(0))
  b = dict(frames=jnp.asarray(frames), label=jnp.asarray([2.0, 4.5]),
           perturb_idx=jnp.zeros((2, 4, 2), jnp.int32), blank=jnp.zeros((2, 4, 2), bool))
  out, rng = jax.jit(prepare)(state, b, jax.random.key(3))
  assert set(out) == {"prompt_ids", "prompt_mask", "pixel_values", "labels", "perturb_idx", "blank"}
  np.testing.assert_array_equal(out["prompt_ids"], np.tile(prompt_P, (2, 1)))
  assert np.asarray(out["prompt_mask"]).all() and (np.asarray(out["prompt_ids"]) == IMAGE_TOKEN).sum() == 2 * 2 * 4
  want = (frames.astype(np.float64) - MEAN) / STD
  tolerance.assert_close(np.asarray(out["pixel_values"]), want, 4, name="normalised frames")
  np.testing.assert_array_equal(out["labels"], [2.0, 4.5])
  np.testing.assert_array_equal(jax.random.key_data(rng),
                                jax.random.key_data(jax.random.fold_in(jax.random.key(3), 7)))


def test_sft_step_with_prepare_is_the_step_on_the_prepared_batch():
  """The trainer's program (prepare inside) updates exactly as the tested step fed the
  prepared batch."""
  prompt_P, frames = _uint8_batch(seed=1)
  prepare = steps.prompt_and_frames(prompt_P)
  m = model.init(TINY, seed=0, mesh=sharding.single_device_mesh())
  tx = train_state.make_optimizer(1e-2)
  b = dict(frames=jnp.asarray(frames), targets=jnp.asarray([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32),
           target_mask=jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0]], jnp.int32))
  graphdef, s1 = train_state.init_state(on_mesh(m, sharding.single_device_mesh()), tx, reference=False)
  _, s2 = train_state.init_state(m, tx, reference=False)
  s1, m1 = steps.make_sft_step(graphdef, s1, tx, chunk=4, prepare=prepare)(s1, b)
  prepared, _ = prepare(s2, b, None)
  s2, m2 = steps.make_sft_step(graphdef, s2, tx, chunk=4)(s2, prepared)
  assert float(m1["loss"]) == float(m2["loss"]) and int(s1.step) == int(s2.step) == 1
  for a, c in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
