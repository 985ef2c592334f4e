"""The decoder's KV-cache path reproduces the plain causal pass."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

import tolerance
from hf_tiny import TINY
from vqathinker_jax import model
from vqathinker_jax.model import llm, sharding

CFG = TINY


def test_prefill_then_decode_equals_full_pass():
  m = model.init(CFG, seed=0, mesh=sharding.single_device_mesh())
  rng = np.random.default_rng(0)
  B, P, steps, S = 2, 7, 5, 16
  ids = jnp.asarray(rng.integers(0, 500, (B, P + steps)))
  lengths = np.array([P, P - 2])  # row 1's prompt is right-padded by 2

  @nnx.jit  # one program per shape instead of op-by-op dispatch
  def run(m, ids_BT, positions_BT, mask_BTS, cache=None, slot=None):
    h, cache = m.llm(m.llm.embed_tokens(ids_BT), positions_BT, mask_BTS, cache, slot)
    return m.llm.logits(h), cache

  # Reference: each row's real tokens (prompt, then the continuation) in one causal pass.
  def reference(b):
    seq = np.concatenate([ids[b, :lengths[b]], ids[b, P:]])[None]
    logits, _ = run(m, seq, jnp.arange(seq.shape[1])[None],
                    llm.causal_mask(jnp.ones(seq.shape, jnp.int32)))
    return np.asarray(logits)[0, lengths[b] - 1:]

  prompt_mask = (np.arange(P)[None] < lengths[:, None]).astype(np.int32)
  cache = llm.init_cache(CFG.text, B, S)
  kv_valid = np.zeros((B, S), bool)
  kv_valid[:, :P] = prompt_mask
  mask = jnp.asarray(np.tril(np.ones((P, S), bool))[None] & kv_valid[:, None])
  out, cache = run(m, ids[:, :P], llm.positions_from_mask(prompt_mask), mask, cache, jnp.int32(0))
  logits = [np.asarray(out)[np.arange(B), lengths - 1]]
  for t in range(steps):
    slot = P + t
    kv_valid[:, slot] = True
    step_mask = jnp.asarray(kv_valid[:, None, :] & (np.arange(S) <= slot)[None, None])
    out, cache = run(m, ids[:, slot:slot + 1], jnp.asarray(lengths[:, None] + t), step_mask,
                     cache, jnp.int32(slot))
    logits.append(np.asarray(out)[:, 0])
  got = np.stack(logits, 1)
  # One token at a time against the whole sequence: attention sums in another order.
  for b in range(B):
    tolerance.assert_close(got[b], reference(b)[:steps + 1], 10, name=f"logits row {b}")


def test_positions_ignore_padding():
  mask = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]])
  np.testing.assert_array_equal(llm.positions_from_mask(mask), [[0, 1, 2, 2], [0, 0, 1, 2]])
  assert llm.causal_mask(mask)[0, 3].tolist() == [True, True, True, False]


def test_rope_is_a_rotation_and_relative():
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
  rot = lambda x, p: llm.apply_rope(x, jnp.array([[p]]), 10000.0)
  # A rotation by float32 cos/sin: a few roundings of |q| (sin^2 + cos^2 is 1 to ~1 ulp).
  tolerance.assert_close(jnp.linalg.norm(rot(q, 9)), jnp.linalg.norm(q), 4, name="norm")
  # q.k after rotating both depends only on the offset; 16 products of |q||k|-sized terms.
  dot = lambda a, b: float(jnp.sum(rot(q, a) * rot(k, b)))
  tolerance.assert_close(dot(5, 2), dot(13, 10), 4, name="q.k",
                         scale=float(jnp.linalg.norm(q) * jnp.linalg.norm(k)))


def test_remat_keeps_values_and_gradients():
  """Rematerialised layers (recomputed in the backward pass) give the same loss and
  gradient as stored activations; only the memory/compute trade changes."""
  import jax
  m = model.init(CFG, seed=1, mesh=sharding.single_device_mesh())
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)
  rng = np.random.default_rng(1)
  ids = jnp.asarray(rng.integers(0, 500, (2, 9)))
  mask = llm.causal_mask(jnp.ones(ids.shape, jnp.int32))
  positions = jnp.broadcast_to(jnp.arange(9), ids.shape)

  def loss(params, remat):
    lm = nnx.merge(graphdef, params, rest).llm
    h, _ = lm(lm.embed_tokens(ids), positions, mask, remat=remat)
    return jnp.sum(jax.nn.log_softmax(lm.logits(h))[..., 7])

  want = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, "off")
  for remat in ("full", "save_dots"):
    got = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, remat)
    # The same operations in the same order, recomputed: equal, up to XLA fusing the
    # recomputed forward differently (a few rounding units of each gradient's scale).
    tolerance.assert_close(got[0], want[0], 4, name=f"loss, remat={remat}")
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
      tolerance.assert_close(np.asarray(g), np.asarray(w), 16, name=f"grad, remat={remat}")
  with np.testing.assert_raises(ValueError):
    loss(params, "some")
