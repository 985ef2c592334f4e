"""layers: the block-structured attention of packed GRPO rows against the dense mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerance
from vqathinker_jax.model import layers


# Jitted: one program per mask kind and shape instead of op-by-op dispatch.
attention = jax.jit(lambda q, k, v, mask: layers.attention(q, k, v, mask, 0.3))


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
  got = attention(q, k, v, m)
  want = attention(q, k, v, m.dense())
  # Blocks against one masked softmax: the same sums in another order, at the outputs' scale.
  tolerance.assert_close(got, want, 7, name="attention")


def test_prefix_group_attention_gradients_equal_dense_mask():
  q, k, v, m = _inputs(seed=1)
  w = jax.random.normal(jax.random.key(9), q.shape)
  grads = jax.jit(jax.grad(lambda q, k, v, mask: jnp.sum(w * layers.attention(q, k, v, mask, 0.3)),
                          argnums=(0, 1, 2)))
  got, want = grads(q, k, v, m), grads(q, k, v, m.dense())
  for g, w_, name in zip(got, want, "qkv"):
    tolerance.assert_close(g, w_, 12, name=f"d/d{name}")


def test_prefix_group_attention_outside_jit():
  q, k, v, m = _inputs()
  tolerance.assert_close(layers.attention(q, k, v, m, 0.3), attention(q, k, v, m.dense()),
                         7, name="attention")
