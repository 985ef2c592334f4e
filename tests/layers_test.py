"""layers: the block-structured attention of packed GRPO rows against the dense mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqathinker_jax import layers


def _inputs(B=3, P=7, G=3, C=5, H=4, K=2, E=8, seed=0):
  L = P + G * C
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (B, L, H, E))
  k = jax.random.normal(ks[1], (B, L, K, E))
  v = jax.random.normal(ks[2], (B, L, K, E))
  lengths = np.array([P, P - 3, 1])[:B]  # right-padded prompts, one of a single token
  valid_BP = jnp.asarray(np.arange(P)[None] < lengths[:, None])
  return q, k, v, layers.PrefixGroupMask(valid_BP, groups=G, group_len=C)


def test_dense_pattern_is_the_packed_layout():
  _, _, _, m = _inputs(B=1, P=3, G=2, C=2)
  got = np.asarray(m.dense()[0]).astype(int)
  want = np.array([[1, 0, 0, 0, 0, 0, 0],   # prompt: causal
                   [1, 1, 0, 0, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0, 0],
                   [1, 1, 1, 1, 0, 0, 0],   # c1: the prompt, then causal within c1
                   [1, 1, 1, 1, 1, 0, 0],
                   [1, 1, 1, 0, 0, 1, 0],   # c2: the prompt and c2, never c1
                   [1, 1, 1, 0, 0, 1, 1]])
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("H,K", [(4, 2), (4, 4), (2, 1)])
def test_prefix_group_attention_equals_dense_mask(H, K):
  q, k, v, m = _inputs(H=H, K=K)
  got = layers.attention(q, k, v, m, 0.3)
  want = layers.attention(q, k, v, m.dense(), 0.3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_prefix_group_attention_gradients_equal_dense_mask():
  q, k, v, m = _inputs(seed=1)
  w = jax.random.normal(jax.random.key(9), q.shape)
  loss = lambda mask: lambda q, k, v: jnp.sum(w * layers.attention(q, k, v, mask, 0.3))
  got = jax.grad(loss(m), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(m.dense()), argnums=(0, 1, 2))(q, k, v)
  for g, w_ in zip(got, want):
    np.testing.assert_allclose(g, w_, rtol=1e-4, atol=1e-5)


def test_prefix_group_attention_under_jit_takes_the_mask_as_a_pytree():
  q, k, v, m = _inputs()
  f = jax.jit(lambda q, k, v, m: layers.attention(q, k, v, m, 0.3))
  np.testing.assert_allclose(f(q, k, v, m), layers.attention(q, k, v, m.dense(), 0.3),
                             rtol=1e-5, atol=1e-6)
