"""A (2, 2, 2) mesh on 8 fake CPU devices: sharded forward equals one device, and every
matrix is actually split."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import tolerance
from hf_tiny import TINY, on_mesh, padded_batch, video_batch
from vqathinker_jax import model
from vqathinker_jax.model import sharding


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() >= 8, "conftest sets 8 fake CPU devices"
  return sharding.make_mesh((2, 2, 2), jax.devices()[:8])


def test_sharded_forward_equals_single_device(hf_checkpoint, mesh):
  single, _ = model.from_pretrained(hf_checkpoint[0], mesh=sharding.single_device_mesh())
  sharded, _ = model.from_pretrained(hf_checkpoint[0], mesh=mesh)
  ids, pix, mask = padded_batch(seed=7, frames=(2, 1, 1, 2))  # batch 4 = data x fsdp
  ref = np.asarray(single(input_ids=ids, pixel_values=pix, attention_mask=mask))
  with jax.set_mesh(mesh):
    out = sharded(input_ids=ids, pixel_values=pix, attention_mask=mask)
  assert out.sharding.spec[0] == ("fsdp", "data")  # activations follow the batch axes
  # The same logits summed in another order (split matmuls, all-reduces): float32 rounding
  # at the logits' scale, nothing more.
  tolerance.assert_close(out, ref, tolerance.SHARDED, name="logits")


def test_every_matrix_is_split(hf_checkpoint, mesh):
  m, _ = model.from_pretrained(hf_checkpoint[0], mesh=mesh)
  checked = 0
  for path, var in nnx.to_flat_state(nnx.state(m, nnx.Param)):
    arr = var[...]
    if arr.ndim >= 2:
      checked += 1
      assert not arr.sharding.is_fully_replicated, path
      shard = arr.addressable_shards[0].data
      assert shard.size < arr.size, path
  assert checked >= 30
  assert m.llm.layers[0].gate.kernel[...].sharding.spec == P("fsdp", "tensor")
  assert m.llm.layers[0].down.kernel[...].sharding.spec == P("tensor", "fsdp")


def test_random_init_is_created_sharded(mesh):
  m = model.init(TINY, seed=2, mesh=mesh)
  emb = m.llm.embed[...]
  assert emb.sharding.spec == P("tensor", "fsdp")
  assert len(emb.addressable_shards) == 8
  # The same values as on one device: the tests that place a model on a mesh rely on it.
  single = model.init(TINY, seed=2, mesh=sharding.single_device_mesh())
  for a, b in zip(jax.tree.leaves(nnx.state(m)), jax.tree.leaves(nnx.state(single))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_decode_layout_is_whole_over_fsdp_and_split_over_tensor(mesh):
  """The rollout's decode copy: every matrix in the compute dtype, no dimension on fsdp,
  the tensor split kept, the values those of the stored parameters; vectors as stored."""
  m = model.init(TINY, seed=2, mesh=mesh)
  with jax.set_mesh(mesh):
    copy = nnx.jit(lambda lm: sharding.decode_layout(lm, jax.numpy.bfloat16))(m.llm)
  stored = dict(nnx.to_flat_state(nnx.state(m.llm, nnx.Param)))
  checked = 0
  for path, var in nnx.to_flat_state(nnx.state(copy, nnx.Param)):
    arr, want = var[...], stored[path][...]
    assert "fsdp" not in jax.tree.leaves(tuple(arr.sharding.spec)), path
    if want.ndim >= 2:
      checked += 1
      assert arr.dtype == jax.numpy.bfloat16, path
      np.testing.assert_array_equal(np.asarray(arr), np.asarray(want.astype(arr.dtype)))
    else:
      assert arr.dtype == want.dtype, path
  assert checked >= 10
  assert copy.layers[0].gate.kernel[...].sharding.spec == P(None, "tensor")
  assert copy.layers[0].down.kernel[...].sharding.spec == P("tensor")


def test_logical_rules_fall_back_to_replication():
  mesh = sharding.make_mesh((1, 2, 4), jax.devices()[:8])
  # 151674 is not divisible by 4: the vocab axis stays whole rather than failing.
  assert sharding.logical_to_spec(("vocab", "embed"), (151674, 64), mesh) == P(None, "fsdp")
  # a mesh axis is used at most once per tensor
  assert sharding.logical_to_spec(("embed", "vit_embed"), (8, 8), mesh) == P("fsdp", None)
  with pytest.raises(ValueError, match="no sharding rule"):
    sharding.logical_to_spec(("bogus",), (8,), mesh)


@pytest.mark.parametrize("shape, message", [
    ((3, 1, 1), "needs 3 devices"),
    ({"data": -1, "fsdp": -1}, "at most one axis"),
    ({"pipeline": 2}, "unknown mesh axes"),
    ((3, -1, 1), "does not divide"),
])
def test_bad_mesh_shapes(shape, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(shape, jax.devices()[:8])


def test_mesh_fills_the_free_axis():
  assert dict(sharding.make_mesh({"data": 2, "tensor": -1}, jax.devices()[:8]).shape) == \
      {"data": 2, "fsdp": 1, "tensor": 4}


@pytest.fixture(scope="module")
def video_reference():
  batch = video_batch(seed=8, videos=8, frames=2, size=56, motion=False)
  single = model.init(TINY, seed=2, mesh=sharding.single_device_mesh())
  return batch, single, np.asarray(single(*batch))


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2)])
def test_sharded_batch_forward_matches(shape, video_reference):
  """Video batches split over data x fsdp, frames through ViT + mlp1 + LLM: guards the
  XLA row permutation that a data-major batch order triggers (see constrain_batch)."""
  (ids, pix, mask), single, want = video_reference
  mesh = sharding.make_mesh(shape, jax.devices()[:8])
  sharded = on_mesh(single, mesh)
  with jax.set_mesh(mesh):
    got = np.asarray(sharded(ids, pix, mask))
  tolerance.assert_close(got, want, tolerance.SHARDED, name="logits")
