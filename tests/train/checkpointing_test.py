"""Training checkpoints: a sharded TrainState round-trips bitwise onto the target shardings,
keep-N/keep-every garbage collection, the Grain position, clear errors, and a process killed
with SIGKILL mid-write leaves the previous checkpoint usable."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import one_device
from hf_tiny import TINY
from vqathinker_jax import model
from vqathinker_jax.model import sharding
from vqathinker_jax.train import state as train_state
from vqathinker_jax.train.checkpointing import Checkpointer


def small_state(step=0, mesh=None):
  """A TrainState of a few sharded arrays with no reference model (ref_params None)."""
  mesh = mesh or sharding.make_mesh((2, 2, 2))
  put = lambda x, spec=P(): jax.device_put(x, NamedSharding(mesh, spec))
  params = {"w": put(jnp.arange(32.0).reshape(8, 4) + step, P("fsdp", "tensor")),
            "b": put(jnp.full((4,), step, jnp.bfloat16))}
  tx = optax.adam(1e-3)
  return train_state.TrainState(step=put(jnp.int32(step)), params=params, rest={"c": put(jnp.ones(3))},
                         opt_state=jax.tree.map(put, tx.init(params)), ref_params=None,
                         skipped=put(jnp.int32(0)))


def assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


def test_model_state_round_trip_on_mesh_bitwise(tmp_path):
  mesh = sharding.make_mesh((2, 2, 2))
  _, state = train_state.init_state(model.init(TINY, seed=0, mesh=mesh), optax.adamw(1e-3),
                                   reference=True)
  # Non-trivial optimiser moments and counters, same shardings.
  state = jax.jit(lambda s: s.replace(step=s.step + 7, opt_state=jax.tree.map(
      lambda x: x + 0.5 if jnp.issubdtype(x.dtype, jnp.floating) else x + 3, s.opt_state)))(state)
  assert len({str(x.sharding.spec) for x in jax.tree.leaves(state)}) > 3
  rng = jax.random.key(42)
  want = jax.tree.map(np.asarray, state)
  want_rng = np.asarray(jax.random.key_data(rng))
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)

  ckpt = Checkpointer(tmp_path, keep=2)
  assert ckpt.save(7, state, rng, metadata={"config": {"lr": 1e-3}, "loss": np.float32(0.25)})
  # The async write must not read device buffers after save returns: the trainer donates them.
  for x in jax.tree.leaves(state):
    x.delete()
  ckpt.close()

  ckpt = Checkpointer(tmp_path, keep=2)
  assert ckpt.latest_step() == 7
  got, got_rng, meta = ckpt.restore(None, target, jax.random.key(0))
  assert_bitwise_equal(got, want)
  for g, t in zip(jax.tree.leaves(got), jax.tree.leaves(target)):
    assert g.sharding == t.sharding
  assert jax.dtypes.issubdtype(got_rng.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(got_rng), want_rng)
  assert meta == {"config": {"lr": 1e-3}, "loss": 0.25}

  # Onto other shardings (everything replicated on another mesh): same values.
  other = jax.sharding.Mesh(np.array(jax.devices()).reshape(8, 1, 1), sharding.MESH_AXES)
  replicated = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=NamedSharding(other, P())), target)
  got, _, _ = ckpt.restore(7, replicated)
  assert_bitwise_equal(got, want)
  assert all(g.sharding == NamedSharding(other, P()) for g in jax.tree.leaves(got))
  ckpt.close()


def test_keep_last_n_plus_every_kth(tmp_path):
  ckpt = Checkpointer(tmp_path, keep=2, save_every=2, keep_every=4)
  saved = [step for step in range(1, 11) if ckpt.save(step, small_state(step))]
  assert saved == [2, 4, 6, 8, 10]
  assert ckpt.save(11, small_state(11), force=True)
  assert not ckpt.save(11, small_state(11), force=True)  # already there: no error, no write
  ckpt.wait()
  assert ckpt.all_steps() == [4, 8, 10, 11]
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [4, 8, 10, 11]
  got, rng, meta = ckpt.restore(8, small_state())
  assert_bitwise_equal(got, small_state(8))
  assert rng is None and meta == {}
  ckpt.close()


def iterator():
  return iter(grain.MapDataset.source(list(range(50))).shuffle(seed=3).map(lambda x: 2 * x)
               .batch(4).to_iter_dataset())


def test_iterator_position_round_trip(tmp_path):
  it = iterator()
  for _ in range(3):
    next(it)
  ckpt = Checkpointer(tmp_path)
  rng = jax.random.PRNGKey(5)  # a raw uint32 key round-trips as is
  ckpt.save(3, small_state(3), rng, data_iterator=it)
  want = [next(it) for _ in range(4)]  # advancing right after save must not move the saved position
  ckpt.save(4, small_state(4))
  ckpt.close()

  ckpt = Checkpointer(tmp_path)
  fresh = iterator()
  _, got_rng, _ = ckpt.restore(3, small_state(), jax.random.PRNGKey(0), data_iterator=fresh)
  np.testing.assert_array_equal(got_rng, rng)
  for w in want:
    np.testing.assert_array_equal(next(fresh), w)
  with pytest.raises(ValueError, match="no data iterator state"):
    ckpt.restore(4, small_state(), data_iterator=iterator())
  with pytest.raises(ValueError, match="no PRNG key"):
    ckpt.restore(4, small_state(), jax.random.key(0))
  ckpt.close()


def test_clear_errors_name_the_directory(tmp_path):
  empty = tmp_path / "empty"
  with Checkpointer(empty) as ckpt:
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match=f"no checkpoint in {empty}"):
      ckpt.restore(None, small_state())
  missing = tmp_path / "missing"
  with Checkpointer(missing, read_only=True) as ckpt:
    with pytest.raises(FileNotFoundError, match=f"no checkpoint in {missing}"):
      ckpt.restore(None, small_state())
  assert not missing.exists()
  with Checkpointer(empty) as ckpt:
    ckpt.save(2, small_state(2))
    with pytest.raises(FileNotFoundError, match=rf"step 5 in {empty} \(available: \[2\]\)"):
      ckpt.restore(5, small_state())


# Saves a 128 MB state over and over (each write takes a good fraction of a second), each
# step's arrays filled with the step number.
CHILD = textwrap.dedent("""
  import sys
  import jax, jax.numpy as jnp
  from vqathinker_jax.train.checkpointing import Checkpointer
  ckpt = Checkpointer(sys.argv[1], keep=2)
  for step in range(1, 1000):
    state = {f"w{i}": jnp.full((2 << 20,), step, jnp.float32) for i in range(16)}
    ckpt.save(step, state, jax.random.key(step), metadata={"step": step})
    ckpt.wait()
""")


def test_sigkill_during_write_leaves_previous_checkpoint_usable(tmp_path):
  ckpt_dir, log = tmp_path / "ckpt", tmp_path / "child.log"
  env = one_device.env(JAX_PLATFORMS="cpu")
  with open(log, "w") as err:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt_dir)], env=env,
                             stdout=err, stderr=err)
  try:
    # Once the third step's temporary directory appears, kill at a random moment of its write.
    deadline = time.time() + 60
    while not (ckpt_dir.exists() and any(n.startswith("3.") for n in os.listdir(ckpt_dir))):
      assert child.poll() is None, log.read_text()[-3000:]
      assert time.time() < deadline, "no third save within 60 s"
      time.sleep(0.002)
    time.sleep(random.uniform(0.0, 0.05))
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
  finally:
    child.kill()
  partial = [n for n in os.listdir(ckpt_dir) if "tmp" in n]
  assert partial, f"the kill landed between writes: {os.listdir(ckpt_dir)}"

  state = {f"w{i}": jnp.zeros((2 << 20,), jnp.float32) for i in range(16)}
  ckpt = Checkpointer(ckpt_dir, keep=2)
  assert ckpt.latest_step() == 2
  got, rng, meta = ckpt.restore(None, state, jax.random.key(0))
  assert meta == {"step": 2}
  assert all(np.all(np.asarray(x) == 2) for x in jax.tree.leaves(got))
  np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(jax.random.key(2)))
  # The run goes on: the same step saves again and the partial write is gone.
  assert ckpt.save(3, state)
  ckpt.close()
  assert ckpt.all_steps() == [2, 3]
  assert not set(partial) & set(os.listdir(ckpt_dir))
