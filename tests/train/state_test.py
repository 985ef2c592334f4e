"""Training state: the reference copy, the learning-rate schedule, and the one step wrapper
(compiled once, ahead of time; a batch of another shape fails instead of recompiling)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hf_tiny import TINY
from vqathinker_jax import model
from vqathinker_jax.model import sharding
from vqathinker_jax.train import state as train_state


@pytest.fixture(scope="module")
def tiny():
  return model.init(TINY, seed=0, mesh=sharding.single_device_mesh())


def test_init_state_keeps_a_separate_reference_only_when_asked(tiny):
  tx = train_state.make_optimizer(1e-3)
  _, with_ref = train_state.init_state(model.init(TINY, seed=0, mesh=sharding.single_device_mesh()),
                                       tx, reference=True)
  _, without = train_state.init_state(tiny, tx, reference=False)
  assert without.ref_params is None and int(without.step) == 0 and int(without.skipped) == 0
  for p, r in zip(jax.tree.leaves(with_ref.params), jax.tree.leaves(with_ref.ref_params)):
    np.testing.assert_array_equal(np.asarray(p), np.asarray(r))
    assert p.unsafe_buffer_pointer() != r.unsafe_buffer_pointer()  # donating params keeps ref


def _opt(**kw):
  o = ml_collections.ConfigDict(dict(lr=1.0, schedule="linear", warmup_steps=0))
  o.update(kw)
  return o


def test_schedule_linear_decay_warmup_and_choices():
  lin = train_state.schedule(_opt(), 10)
  assert [float(lin(s)) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
  warm = train_state.schedule(_opt(warmup_steps=4), 12)
  assert [float(warm(s)) for s in (0, 2, 4, 8, 12)] == [0.0, 0.5, 1.0, 0.5, 0.0]
  assert float(train_state.schedule(_opt(schedule="constant"), 10)(7)) == 1.0
  cos = train_state.schedule(_opt(schedule="cosine"), 10)
  assert float(cos(5)) == pytest.approx(0.5, abs=1e-6) and float(cos(10)) == pytest.approx(0.0)
  assert set(train_state.SCHEDULES) == {"linear", "constant", "cosine"}


def test_apply_gradients_skips_non_finite(tiny):
  tx = optax.sgd(0.5)
  _, st = train_state.init_state(on_copy(tiny), tx, reference=False)
  grads = jax.tree.map(jnp.ones_like, st.params)
  new, norm, finite = st.apply_gradients(tx, jnp.float32(1.0), grads)
  assert bool(finite) and float(norm) > 0
  leaf = lambda s: np.asarray(jax.tree.leaves(s.params)[0])
  np.testing.assert_array_equal(leaf(new), (leaf(st) - np.float32(0.5)))
  kept, _, finite = st.apply_gradients(tx, jnp.float32(jnp.nan), grads)
  assert not bool(finite)
  np.testing.assert_array_equal(leaf(kept), leaf(st))


def on_copy(m):
  from hf_tiny import on_mesh
  return on_mesh(m, sharding.single_device_mesh())


def test_step_compiles_once_reports_it_and_refuses_another_shape():
  compiled = []
  state = {"w": jnp.zeros(3)}
  jitted = jax.jit(lambda s, x: ({"w": s["w"] + x.sum()}, {"tokens": x.sum()}))
  step = train_state.Step(jitted, on_compile=compiled.append)
  state, metrics = step.timed(state, jnp.ones(4))
  state, metrics = step.timed(state, jnp.ones(4))
  assert len(compiled) == 1 and compiled[0] > 0 and metrics["compilations"] == 1
  assert metrics["step_time_s"] > 0 and metrics["tokens_per_s"] == pytest.approx(4 / metrics["step_time_s"])
  np.testing.assert_array_equal(np.asarray(state["w"]), [8.0, 8.0, 8.0])
  with pytest.raises(TypeError):  # compiled for [4]: no silent recompilation
    step(state, jnp.ones(5))
